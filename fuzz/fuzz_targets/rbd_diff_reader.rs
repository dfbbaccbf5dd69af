//! Fuzzes the rbd diff v1 reader: any bytes must give records or an error, never a panic, and
//! never a piece larger than `MAX_DATA_PIECE` (so never an allocation a length field decides).
//! Whatever the reader accepts, the writer must accept too, and reading the writer's output
//! must give the same records back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use virt_rbd_backup::repo::rbd_diff::{DiffRecord, RbdDiffReader, RbdDiffWriter, MAX_DATA_PIECE};

fn read_all(stream: &[u8]) -> Option<(RbdDiffReader<&[u8]>, Vec<DiffRecord>)> {
    let mut reader = RbdDiffReader::new(stream).ok()?;
    let mut records = Vec::new();
    loop {
        match reader.next_record() {
            Ok(Some(record)) => {
                if let DiffRecord::Data { data, .. } = &record {
                    assert!(data.len() <= MAX_DATA_PIECE);
                }
                records.push(record);
            }
            Ok(None) => return Some((reader, records)),
            Err(e) => {
                let _ = e.to_string();
                assert!(
                    reader.next_record().is_err(),
                    "a failed reader must stay failed"
                );
                return None;
            }
        }
    }
}

fuzz_target!(|stream: &[u8]| {
    let Some((reader, records)) = read_all(stream) else {
        return;
    };
    // Zero-length records are legal to read but the writer writes none.
    let records: Vec<DiffRecord> = records.into_iter().filter(|r| r.length() > 0).collect();
    let to_snap = reader.to_snap().unwrap_or("head").to_string();
    let mut writer = RbdDiffWriter::new(
        Vec::new(),
        reader.from_snap(),
        &to_snap,
        reader.image_size(),
    )
    .expect("the writer accepts the metadata the reader accepted");
    for record in &records {
        match record {
            DiffRecord::Data { offset, data } => writer.write_data(*offset, data),
            DiffRecord::Zero { offset, length } => writer.write_zero(*offset, *length),
        }
        .expect("the writer accepts the records the reader accepted");
    }
    let rewritten = writer.finish().expect("writing to memory succeeds");
    let (again, back) = read_all(&rewritten).expect("the writer's output reads back");
    assert_eq!(back, records);
    assert_eq!(again.from_snap(), reader.from_snap());
    assert_eq!(again.image_size(), reader.image_size());
});
