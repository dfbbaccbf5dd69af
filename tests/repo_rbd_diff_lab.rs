//! The rbd diff v1 reader and writer against Ceph's own tools on the lab cluster.
//!
//! The reader must parse what `rbd export-diff` writes, and what the writer writes must restore,
//! through `rbd import-diff`, an image identical byte for byte to what `rbd export` says the
//! snapshot holds. Changes are made with `qemu-io` (exact writes, zero writes and discards
//! through librbd), so the expected records follow from the test's own edits, not from this
//! crate.
//!
//! Skipped unless `VRB_LAB=1` (and `CEPH_CONF`, from `eval "$(lab/lab.sh env)"`). Every image
//! it creates has a unique name and is removed at the end, also when an assertion fails.
//!
//! Run: `VRB_LAB=1 CEPH_CONF=... cargo test --test repo_rbd_diff_lab -- --nocapture`

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use virt_rbd_backup::repo::image_file::nonzero_runs;
use virt_rbd_backup::repo::rbd_diff::{DiffRecord, RbdDiffReader, RbdDiffWriter};

const MIB: u64 = 1 << 20;
const IMAGE_SIZE: u64 = 16 * MIB;

fn lab_enabled() -> bool {
    if std::env::var("VRB_LAB").as_deref() != Ok("1") {
        eprintln!("skipped: set VRB_LAB=1 with the lab up (lab/lab.sh up) and CEPH_CONF set (eval \"$(lab/lab.sh env)\") to compare with rbd export-diff/import-diff");
        return false;
    }
    assert!(
        std::env::var_os("CEPH_CONF").is_some(),
        "VRB_LAB=1 but CEPH_CONF is not set: eval \"$(lab/lab.sh env)\" first"
    );
    true
}

fn conf() -> String {
    std::env::var("CEPH_CONF").expect("CEPH_CONF is set")
}

fn pool() -> String {
    std::env::var("LAB_CEPH_POOL").unwrap_or_else(|_| "rbd".into())
}

/// Runs a command, panics with its stderr when it fails, returns its stdout.
fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program}: {e} (is it installed? lab/install-deps.sh)")
        });
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn rbd(args: &[&str]) -> Vec<u8> {
    let conf = conf();
    let mut all = vec!["--conf", conf.as_str()];
    all.extend_from_slice(args);
    run("rbd", &all)
}

/// Runs `qemu-io` commands on an image through librbd.
fn qemu_io(image: &str, commands: &[&str]) {
    let target = format!("rbd:{}:conf={}", image, conf());
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend_from_slice(&["-c", c]);
    }
    args.push(&target);
    run("qemu-io", &args);
}

/// The image's bytes at `spec`, as `rbd export` writes them.
fn export(spec: &str, dir: &Path) -> Vec<u8> {
    let path = dir.join(format!("{}.raw", spec.replace(['/', '@'], "_")));
    rbd(&[
        "export",
        "--no-progress",
        spec,
        path.to_str().expect("UTF-8 path"),
    ]);
    std::fs::read(&path).expect("read export")
}

/// Scratch images with unique names, removed (snapshots first) when this drops.
struct Scratch {
    suffix: String,
    images: RefCell<Vec<String>>,
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos();
        Scratch {
            suffix: format!("{}-{nanos}", std::process::id()),
            images: RefCell::new(Vec::new()),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A `pool/name` for a new image; registered for removal before it is created.
    fn image_name(&self, role: &str) -> String {
        let spec = format!("{}/vrb-test-rbddiff-{role}-{}", pool(), self.suffix);
        self.images.borrow_mut().push(spec.clone());
        spec
    }

    fn create(&self, role: &str, size: u64) -> String {
        let spec = self.image_name(role);
        rbd(&[
            "create",
            "--size",
            &format!("{}K", size / 1024),
            "--object-size",
            "4M",
            &spec,
        ]);
        spec
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for spec in self.images.borrow().iter() {
            let conf = conf();
            let quiet = |args: &[&str]| {
                Command::new("rbd")
                    .args(["--conf", conf.as_str()])
                    .args(args)
                    .output()
            };
            let _ = quiet(&["snap", "purge", "--no-progress", spec]);
            match quiet(&["rm", "--no-progress", spec]) {
                Ok(out) if out.status.success() => {}
                Ok(out) if String::from_utf8_lossy(&out.stderr).contains("No such file") => {}
                other => eprintln!("could not remove scratch image {spec}: {other:?}"),
            }
        }
    }
}

/// All records of a diff file, with its metadata.
fn read_diff(path: &Path) -> (Option<String>, Option<String>, u64, Vec<DiffRecord>) {
    let file = std::fs::File::open(path).expect("open diff");
    let mut reader = RbdDiffReader::new(std::io::BufReader::new(file)).expect("read diff header");
    let mut records = Vec::new();
    while let Some(r) = reader.next_record().expect("read diff record") {
        records.push(r);
    }
    (
        reader.from_snap().map(String::from),
        reader.to_snap().map(String::from),
        reader.image_size(),
        records,
    )
}

/// `(kind, offset, length)` of each record, for comparing with expectations.
fn shape(records: &[DiffRecord]) -> Vec<(char, u64, u64)> {
    records
        .iter()
        .map(|r| match r {
            DiffRecord::Data { offset, data } => ('w', *offset, data.len() as u64),
            DiffRecord::Zero { offset, length } => ('z', *offset, *length),
        })
        .collect()
}

/// The records of a diff applied to `base`: the image the diff leads to.
fn apply(base: &[u8], records: &[DiffRecord]) -> Vec<u8> {
    let mut image = base.to_vec();
    for r in records {
        match r {
            DiffRecord::Data { offset, data } => {
                image[*offset as usize..*offset as usize + data.len()].copy_from_slice(data)
            }
            DiffRecord::Zero { offset, length } => {
                image[*offset as usize..(*offset + *length) as usize].fill(0)
            }
        }
    }
    image
}

/// Checks Ceph's records against the edits made: each edit lies inside one record of its kind,
/// no record crosses a 4 MiB object, and where a record reaches past the edits (librbd reports
/// object extents: an object that grew is reported from its old end) the bytes did not change.
fn check_records_cover(records: &[DiffRecord], edits: &[(char, u64, u64)], s1: &[u8], s2: &[u8]) {
    let shapes = shape(records);
    for &(kind, offset, length) in edits {
        assert!(
            shapes
                .iter()
                .any(|&(k, o, l)| k == kind && o <= offset && offset + length <= o + l),
            "no '{kind}' record covers the edit at {offset}+{length}: {shapes:?}"
        );
    }
    let object = 4 * MIB;
    let mut edited = vec![false; s1.len()];
    for &(_, offset, length) in edits {
        edited[offset as usize..(offset + length) as usize].fill(true);
    }
    for &(kind, offset, length) in &shapes {
        assert_eq!(
            offset / object,
            (offset + length - 1) / object,
            "'{kind}' record at {offset}+{length} crosses an object boundary"
        );
        for i in offset as usize..(offset + length) as usize {
            assert!(
                edited[i] || s1[i] == s2[i],
                "'{kind}' record at {offset}+{length} covers byte {i}, not edited yet changed"
            );
        }
    }
}

fn write_records<W: std::io::Write>(w: &mut RbdDiffWriter<W>, records: &[DiffRecord]) {
    for r in records {
        match r {
            DiffRecord::Data { offset, data } => w.write_data(*offset, data).expect("write data"),
            DiffRecord::Zero { offset, length } => {
                w.write_zero(*offset, *length).expect("write zero")
            }
        }
    }
}

fn same_bytes(what: &str, a: &[u8], b: &[u8]) {
    if a != b {
        let first = a.iter().zip(b).position(|(x, y)| x != y);
        panic!(
            "{what}: differ (lengths {} and {}, first difference at {first:?})",
            a.len(),
            b.len()
        );
    }
}

#[test]
fn export_diff_streams_are_read_and_our_diffs_restore_with_import_diff() {
    if !lab_enabled() {
        return;
    }
    let s = Scratch::new();
    let img = s.create("src", IMAGE_SIZE);

    // s1: 8 MiB of 0xaa, 2 MiB of 0x11 at 12 MiB, the rest never written.
    qemu_io(&img, &["write -P 0xaa 0 8M", "write -P 0x11 12M 2M"]);
    rbd(&["snap", "create", "--no-progress", &format!("{img}@s1")]);
    // The changes, and what each should become in the diff (Ceph 16.2, 4 MiB objects).
    qemu_io(
        &img,
        &[
            "write -P 0xbb 1M 64k", // data, merged with the next one (same object, adjacent)
            "write -P 0xcc 1088k 64k", //
            "write -P 0xdd 6M 4M",  // data, split at the object boundary at 8 MiB
            "discard 2M 1M",        // zero
            "write -z 12M 512k",    // zero (zeros written over data)
            "write -P 0 5M 4k",     // zero (zero bytes written over data)
            "write -P 0xee 15M 4k", // data, where s1 had never been written
        ],
    );
    rbd(&["snap", "create", "--no-progress", &format!("{img}@s2")]);
    // What each edit must be found in: one record of that kind covering it (A and B together:
    // merged; C in two records: split at the object boundary).
    let changes: Vec<(char, u64, u64)> = vec![
        ('w', MIB, 128 * 1024),
        ('z', 2 * MIB, MIB),
        ('z', 5 * MIB, 4096),
        ('w', 6 * MIB, 2 * MIB),
        ('w', 8 * MIB, 2 * MIB),
        ('z', 12 * MIB, 512 * 1024),
        ('w', 15 * MIB, 4096),
    ];

    let s1 = export(&format!("{img}@s1"), s.dir.path());
    let s2 = export(&format!("{img}@s2"), s.dir.path());

    // Ceph's stream, read by our reader.
    let ceph_diff = s.path("ceph-s1-s2.diff");
    rbd(&[
        "export-diff",
        "--no-progress",
        "--from-snap",
        "s1",
        &format!("{img}@s2"),
        ceph_diff.to_str().expect("UTF-8 path"),
    ]);
    let (from, to, size, records) = read_diff(&ceph_diff);
    assert_eq!(
        (from.as_deref(), to.as_deref(), size),
        (Some("s1"), Some("s2"), IMAGE_SIZE)
    );
    eprintln!("rbd export-diff --from-snap s1: {:?}", shape(&records));
    check_records_cover(&records, &changes, &s1, &s2);
    same_bytes(
        "s1 with Ceph's diff applied vs rbd export @s2",
        &apply(&s1, &records),
        &s2,
    );

    // Our writer, fed the records read, writes Ceph's stream byte for byte.
    let mut w = RbdDiffWriter::new(Vec::new(), Some("s1"), "s2", size).expect("writer");
    write_records(&mut w, &records);
    let ours = w.finish().expect("finish");
    same_bytes(
        "our rewrite vs rbd export-diff",
        &ours,
        &std::fs::read(&ceph_diff).expect("read Ceph's diff"),
    );

    // A diff built from the known changes alone (A and B as separate records, C in one piece),
    // restored by rbd import-diff onto a copy of s1.
    let our_diff = s.path("ours-s1-s2.diff");
    {
        let file = std::fs::File::create(&our_diff).expect("create diff");
        let mut w = RbdDiffWriter::new(std::io::BufWriter::new(file), Some("s1"), "s2", size)
            .expect("writer");
        let edits: [(char, u64, u64); 8] = [
            ('w', MIB, 64 * 1024),
            ('w', MIB + 64 * 1024, 64 * 1024),
            ('z', 2 * MIB, MIB),
            ('z', 5 * MIB, 4096),
            ('w', 6 * MIB, 4 * MIB),
            ('z', 12 * MIB, 512 * 1024),
            ('w', 15 * MIB, 4096),
            ('z', 15 * MIB + 4096, 4096), // already zero: harmless, and exercises a 'z' at the end
        ];
        for (kind, offset, length) in edits {
            if kind == 'w' {
                w.write_data(offset, &s2[offset as usize..(offset + length) as usize])
                    .expect("write data");
            } else {
                w.write_zero(offset, length).expect("write zero");
            }
        }
        w.finish().expect("finish");
    }
    let s1_file = s.path("s1.raw");
    std::fs::write(&s1_file, &s1).expect("write s1");
    let copy = s.image_name("restored");
    rbd(&[
        "import",
        "--no-progress",
        "--object-size",
        "4M",
        s1_file.to_str().expect("UTF-8 path"),
        &copy,
    ]);
    rbd(&["snap", "create", "--no-progress", &format!("{copy}@s1")]);
    rbd(&[
        "import-diff",
        "--no-progress",
        our_diff.to_str().expect("UTF-8 path"),
        &copy,
    ]);
    let snaps = String::from_utf8(rbd(&["snap", "ls", &copy])).expect("UTF-8");
    assert!(
        snaps
            .lines()
            .any(|l| l.split_whitespace().nth(1) == Some("s2")),
        "rbd import-diff did not create the 't' snapshot s2:\n{snaps}"
    );
    same_bytes(
        "rbd export of the restored @s2 vs the source @s2",
        &export(&format!("{copy}@s2"), s.dir.path()),
        &s2,
    );

    // A diff of the image head has no 't' record.
    let head_diff = s.path("ceph-s1-head.diff");
    rbd(&[
        "export-diff",
        "--no-progress",
        "--from-snap",
        "s1",
        &img,
        head_diff.to_str().expect("UTF-8 path"),
    ]);
    let (from, to, _, head_records) = read_diff(&head_diff);
    assert_eq!((from.as_deref(), to), (Some("s1"), None));
    assert_eq!(shape(&head_records), shape(&records));
}

#[test]
fn a_diff_from_nothing_restores_into_a_fresh_image() {
    if !lab_enabled() {
        return;
    }
    let s = Scratch::new();
    let img = s.create("full", IMAGE_SIZE);
    qemu_io(
        &img,
        &[
            "write -P 0x5a 0 3M",
            "write -P 0x00 1M 4k", // zeros inside data: a hole in our diff, data in Ceph's
            "write -P 0x77 7M 2M", // crosses the object boundary at 8 MiB
            "write -P 0x33 16380k 4k", // the last 4 KiB of the image
        ],
    );
    rbd(&["snap", "create", "--no-progress", &format!("{img}@s1")]);
    let s1 = export(&format!("{img}@s1"), s.dir.path());

    // Ceph's full diff: no 'f', and applied to zeros it gives the image.
    let ceph_diff = s.path("ceph-full.diff");
    rbd(&[
        "export-diff",
        "--no-progress",
        &format!("{img}@s1"),
        ceph_diff.to_str().expect("UTF-8 path"),
    ]);
    let (from, to, size, records) = read_diff(&ceph_diff);
    assert_eq!(
        (from.as_deref(), to.as_deref(), size),
        (None, Some("s1"), IMAGE_SIZE)
    );
    eprintln!("rbd export-diff (from nothing): {:?}", shape(&records));
    same_bytes(
        "zeros with Ceph's full diff applied vs rbd export @s1",
        &apply(&vec![0; IMAGE_SIZE as usize], &records),
        &s1,
    );

    // Ours: the non-zero 4 KiB runs of the export, imported into a smaller fresh image that
    // import-diff must grow to the 's' size.
    let our_diff = s.path("ours-full.diff");
    {
        let file = std::fs::File::create(&our_diff).expect("create diff");
        let mut w = RbdDiffWriter::new(std::io::BufWriter::new(file), None, "s1", IMAGE_SIZE)
            .expect("writer");
        for (start, end) in nonzero_runs(&s1, 4096) {
            w.write_data(start as u64, &s1[start..end])
                .expect("write data");
        }
        w.finish().expect("finish");
    }
    let fresh = s.create("fresh", MIB);
    rbd(&[
        "import-diff",
        "--no-progress",
        our_diff.to_str().expect("UTF-8 path"),
        &fresh,
    ]);
    same_bytes(
        "rbd export of the fresh image @s1 vs the source @s1",
        &export(&format!("{fresh}@s1"), s.dir.path()),
        &s1,
    );
}
