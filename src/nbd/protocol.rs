//! The NBD protocol as this read-only server speaks it: pure encoding and parsing, no sockets.
//!
//! Source: the protocol document of the NBD project (`doc/proto.md`). All integers are
//! big-endian. What is implemented:
//!
//! - **Handshake, fixed newstyle.** The server sends `NBDMAGIC`, `IHAVEOPT` (as the u64
//!   `0x49484156454F5054`) and u16 handshake flags `FIXED_NEWSTYLE | NO_ZEROES`; the client
//!   answers with u32 flags. Each option is u64 `IHAVEOPT`, u32 option, u32 length, data; each
//!   reply is u64 `0x0003e889045565a9`, u32 option, u32 reply type, u32 length, data.
//! - **Options.** `EXPORT_NAME` (1; answered with u64 size, u16 transmission flags and 124 zero
//!   bytes unless the client set `NO_ZEROES`), `ABORT` (2), `LIST` (3), `INFO` (6) and `GO` (7)
//!   (`REP_INFO` with `INFO_EXPORT`, and `INFO_BLOCK_SIZE` when asked, then `ACK`),
//!   `STRUCTURED_REPLY` (8), `LIST_META_CONTEXT` (9) and `SET_META_CONTEXT` (10) for
//!   `base:allocation` only. Anything else gets `REP_ERR_UNSUP`; `STARTTLS` gets
//!   `REP_ERR_POLICY` (no TLS: serve on a Unix socket or a trusted network).
//! - **Transmission flags.** `HAS_FLAGS | READ_ONLY | CAN_MULTI_CONN` (every connection sees the
//!   same immutable image), plus `SEND_DF` with structured replies (a read is always answered
//!   with one data chunk, so it is never fragmented).
//! - **Requests** (28 bytes: u32 `0x25609513`, u16 flags, u16 type, u64 cookie, u64 offset, u32
//!   length). `READ` up to [`MAX_REQUEST`] bytes, `BLOCK_STATUS` (structured replies and
//!   `base:allocation` negotiated), `DISC`, `FLUSH` (nothing to flush); `WRITE`, `TRIM`,
//!   `WRITE_ZEROES` get `EPERM` (a `WRITE`'s payload is read and dropped first).
//! - **Replies.** Simple (u32 `0x67446698`, u32 error, u64 cookie, data) or structured chunks
//!   (u32 `0x668e33ef`, u16 flags, u16 type, u64 cookie, u32 length, payload): `OFFSET_DATA`
//!   (1), `BLOCK_STATUS` (5: u32 context id, then u32 length + u32 flags per extent, flags
//!   `HOLE | ZERO` for holes), `ERROR` (32769: u32 error, u16 message length, message).

use super::NbdError;
use crate::repo::extent_source::Extent;

/// `NBDMAGIC`.
pub const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`: the option magic.
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
/// Magic of option replies.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Magic of requests.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Magic of simple replies.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
/// Magic of structured reply chunks.
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
/// Handshake flag: no 124 zero bytes after `EXPORT_NAME`'s reply.
pub const FLAG_NO_ZEROES: u16 = 2;
/// Client flags.
pub const FLAG_C_FIXED_NEWSTYLE: u32 = 1;
/// Client flag: the client understood `FLAG_NO_ZEROES`.
pub const FLAG_C_NO_ZEROES: u32 = 2;

/// Options.
pub const OPT_EXPORT_NAME: u32 = 1;
/// End the negotiation.
pub const OPT_ABORT: u32 = 2;
/// List the exports.
pub const OPT_LIST: u32 = 3;
/// TLS.
pub const OPT_STARTTLS: u32 = 5;
/// Describe an export.
pub const OPT_INFO: u32 = 6;
/// Describe an export and enter transmission.
pub const OPT_GO: u32 = 7;
/// Structured replies.
pub const OPT_STRUCTURED_REPLY: u32 = 8;
/// List metadata contexts.
pub const OPT_LIST_META_CONTEXT: u32 = 9;
/// Select metadata contexts.
pub const OPT_SET_META_CONTEXT: u32 = 10;

/// Option reply types.
pub const REP_ACK: u32 = 1;
/// An export, in reply to `LIST`.
pub const REP_SERVER: u32 = 2;
/// Information about an export.
pub const REP_INFO: u32 = 3;
/// A metadata context.
pub const REP_META_CONTEXT: u32 = 4;
/// Option not supported.
pub const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
/// Refused by policy.
pub const REP_ERR_POLICY: u32 = (1 << 31) + 2;
/// Syntactically or semantically invalid.
pub const REP_ERR_INVALID: u32 = (1 << 31) + 3;
/// No such export.
pub const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
/// Option data too big.
pub const REP_ERR_TOO_BIG: u32 = (1 << 31) + 9;

/// Information types.
pub const INFO_EXPORT: u16 = 0;
/// Block size constraints.
pub const INFO_BLOCK_SIZE: u16 = 3;

/// Transmission flags.
pub const TFLAG_HAS_FLAGS: u16 = 1;
/// The export is read-only.
pub const TFLAG_READ_ONLY: u16 = 1 << 1;
/// The server honours `CMD_FLAG_DF`.
pub const TFLAG_SEND_DF: u16 = 1 << 7;
/// Several connections see the same data.
pub const TFLAG_CAN_MULTI_CONN: u16 = 1 << 8;

/// Commands.
pub const CMD_READ: u16 = 0;
/// Write.
pub const CMD_WRITE: u16 = 1;
/// Disconnect.
pub const CMD_DISC: u16 = 2;
/// Flush.
pub const CMD_FLUSH: u16 = 3;
/// Trim.
pub const CMD_TRIM: u16 = 4;
/// Write zeroes.
pub const CMD_WRITE_ZEROES: u16 = 6;
/// Block status.
pub const CMD_BLOCK_STATUS: u16 = 7;
/// Command flag: at most one extent in the block status reply.
pub const CMD_FLAG_REQ_ONE: u16 = 1 << 3;

/// Structured reply types.
pub const REPLY_TYPE_OFFSET_DATA: u16 = 1;
/// Block status.
pub const REPLY_TYPE_BLOCK_STATUS: u16 = 5;
/// An error.
pub const REPLY_TYPE_ERROR: u16 = (1 << 15) + 1;
/// Flag of the last chunk of a reply.
pub const REPLY_FLAG_DONE: u16 = 1;

/// `base:allocation` flags.
pub const STATE_HOLE: u32 = 1;
/// Reads as zeros.
pub const STATE_ZERO: u32 = 2;

/// Errors sent to the client.
pub const EPERM: u32 = 1;
/// I/O error (a block that fails its checksum).
pub const EIO: u32 = 5;
/// Invalid request.
pub const EINVAL: u32 = 22;
/// A read longer than the maximum, with structured replies.
pub const EOVERFLOW: u32 = 75;

/// The largest read (and write payload) accepted: the protocol's default maximum block size.
pub const MAX_REQUEST: u32 = 32 << 20;
/// The largest option payload accepted during the handshake.
pub const MAX_OPTION: u32 = 64 << 10;
/// The only metadata context offered.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// Its id on every connection.
pub const BASE_ALLOCATION_ID: u32 = 1;

fn bad(message: impl Into<String>) -> NbdError {
    NbdError::Protocol(message.into())
}

/// The server's first 18 bytes.
pub fn greeting() -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..8].copy_from_slice(&NBD_MAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    out[16..].copy_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    out
}

/// An option's header: the option and the length of its data.
pub fn parse_option_header(bytes: &[u8; 16]) -> Result<(u32, u32), NbdError> {
    let magic = u64::from_be_bytes(bytes[..8].try_into().expect("8 bytes"));
    if magic != IHAVEOPT {
        return Err(bad(format!("option magic {magic:#x} is not IHAVEOPT")));
    }
    Ok((
        u32::from_be_bytes(bytes[8..12].try_into().expect("4 bytes")),
        u32::from_be_bytes(bytes[12..].try_into().expect("4 bytes")),
    ))
}

/// An option reply.
pub fn option_reply(option: u32, reply: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + payload.len());
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Reads a u32-length-prefixed string at `*at` of `data`.
fn take_string(data: &[u8], at: &mut usize) -> Result<String, NbdError> {
    let len = data
        .get(*at..*at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")) as usize)
        .ok_or_else(|| bad("option data ends inside a string length"))?;
    *at += 4;
    let bytes = data
        .get(*at..at.saturating_add(len))
        .ok_or_else(|| bad("option data ends inside a string"))?;
    *at += len;
    String::from_utf8(bytes.to_vec()).map_err(|_| bad("a string that is not UTF-8"))
}

/// `INFO`/`GO` data: the export name and the information types asked for.
pub fn parse_info_request(data: &[u8]) -> Result<(String, Vec<u16>), NbdError> {
    let mut at = 0;
    let name = take_string(data, &mut at)?;
    let count = data
        .get(at..at + 2)
        .map(|b| u16::from_be_bytes(b.try_into().expect("2 bytes")) as usize)
        .ok_or_else(|| bad("INFO/GO data ends before the request count"))?;
    at += 2;
    if data.len() != at + 2 * count {
        return Err(bad("INFO/GO data length does not match its request count"));
    }
    let requests = data[at..]
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    Ok((name, requests))
}

/// `LIST_META_CONTEXT`/`SET_META_CONTEXT` data: the export name and the queries.
pub fn parse_meta_context_request(data: &[u8]) -> Result<(String, Vec<String>), NbdError> {
    let mut at = 0;
    let name = take_string(data, &mut at)?;
    let count = data
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        .ok_or_else(|| bad("meta context data ends before the query count"))?;
    at += 4;
    let mut queries = Vec::new();
    for _ in 0..count {
        queries.push(take_string(data, &mut at)?);
    }
    if at != data.len() {
        return Err(bad("meta context data has bytes after its queries"));
    }
    Ok((name, queries))
}

/// What the negotiation does after an option.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send these bytes, read the next option.
    Reply(Vec<u8>),
    /// Send these bytes, then the transmission phase begins.
    Transmit(Vec<u8>),
    /// Send these bytes (maybe none) and close the connection.
    Close(Vec<u8>),
}

/// The handshake's state for one connection, after the client's flags.
#[derive(Debug)]
pub struct Negotiation {
    export: String,
    size: u64,
    no_zeroes: bool,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// `base:allocation` was selected.
    pub allocation_context: bool,
}

impl Negotiation {
    /// Starts from the client's flags; refuses a client without fixed newstyle.
    pub fn new(export: &str, size: u64, client_flags: u32) -> Result<Self, NbdError> {
        if client_flags & FLAG_C_FIXED_NEWSTYLE == 0 {
            return Err(bad("the client does not speak fixed newstyle negotiation"));
        }
        if client_flags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
            return Err(bad(format!("unknown client flags {client_flags:#x}")));
        }
        Ok(Negotiation {
            export: export.to_string(),
            size,
            no_zeroes: client_flags & FLAG_C_NO_ZEROES != 0,
            structured: false,
            allocation_context: false,
        })
    }

    /// The transmission flags of this connection.
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = TFLAG_HAS_FLAGS | TFLAG_READ_ONLY | TFLAG_CAN_MULTI_CONN;
        if self.structured {
            flags |= TFLAG_SEND_DF;
        }
        flags
    }

    fn known(&self, name: &str) -> bool {
        name.is_empty() || name == self.export
    }

    fn error(option: u32, reply: u32, message: &str) -> Step {
        Step::Reply(option_reply(option, reply, message.as_bytes()))
    }

    /// Handles one option.
    pub fn option(&mut self, option: u32, data: &[u8]) -> Step {
        match option {
            OPT_EXPORT_NAME => {
                let name = String::from_utf8_lossy(data);
                if !self.known(&name) {
                    // No way to say why with this old option: the spec says close.
                    return Step::Close(Vec::new());
                }
                let mut out = self.size.to_be_bytes().to_vec();
                out.extend_from_slice(&self.transmission_flags().to_be_bytes());
                if !self.no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                Step::Transmit(out)
            }
            OPT_ABORT => Step::Close(option_reply(option, REP_ACK, &[])),
            OPT_LIST => {
                if !data.is_empty() {
                    return Self::error(option, REP_ERR_INVALID, "LIST takes no data");
                }
                let mut payload = (self.export.len() as u32).to_be_bytes().to_vec();
                payload.extend_from_slice(self.export.as_bytes());
                let mut out = option_reply(option, REP_SERVER, &payload);
                out.extend(option_reply(option, REP_ACK, &[]));
                Step::Reply(out)
            }
            OPT_STARTTLS => Self::error(
                option,
                REP_ERR_POLICY,
                "no TLS: use a Unix socket or a trusted network",
            ),
            OPT_INFO | OPT_GO => {
                let (name, requests) = match parse_info_request(data) {
                    Ok(r) => r,
                    Err(e) => return Self::error(option, REP_ERR_INVALID, &e.to_string()),
                };
                if !self.known(&name) {
                    return Self::error(
                        option,
                        REP_ERR_UNKNOWN,
                        &format!("no export {name:?}; this server has {:?}", self.export),
                    );
                }
                let mut export = INFO_EXPORT.to_be_bytes().to_vec();
                export.extend_from_slice(&self.size.to_be_bytes());
                export.extend_from_slice(&self.transmission_flags().to_be_bytes());
                let mut out = option_reply(option, REP_INFO, &export);
                if requests.contains(&INFO_BLOCK_SIZE) {
                    let mut sizes = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [1u32, 4096, MAX_REQUEST] {
                        sizes.extend_from_slice(&v.to_be_bytes());
                    }
                    out.extend(option_reply(option, REP_INFO, &sizes));
                }
                out.extend(option_reply(option, REP_ACK, &[]));
                if option == OPT_GO {
                    Step::Transmit(out)
                } else {
                    Step::Reply(out)
                }
            }
            OPT_STRUCTURED_REPLY => {
                if !data.is_empty() {
                    return Self::error(option, REP_ERR_INVALID, "STRUCTURED_REPLY takes no data");
                }
                self.structured = true;
                Step::Reply(option_reply(option, REP_ACK, &[]))
            }
            OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                if !self.structured {
                    return Self::error(
                        option,
                        REP_ERR_INVALID,
                        "negotiate structured replies first",
                    );
                }
                let (name, queries) = match parse_meta_context_request(data) {
                    Ok(r) => r,
                    Err(e) => return Self::error(option, REP_ERR_INVALID, &e.to_string()),
                };
                if !self.known(&name) {
                    return Self::error(option, REP_ERR_UNKNOWN, "no such export");
                }
                // An empty LIST query means "all"; "base:" lists the namespace.
                let offered = if option == OPT_LIST_META_CONTEXT {
                    queries.is_empty()
                        || queries.iter().any(|q| q == BASE_ALLOCATION || q == "base:")
                } else {
                    queries.iter().any(|q| q == BASE_ALLOCATION)
                };
                if option == OPT_SET_META_CONTEXT {
                    self.allocation_context = offered;
                }
                let mut out = Vec::new();
                if offered {
                    let mut payload = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                    payload.extend_from_slice(BASE_ALLOCATION.as_bytes());
                    out.extend(option_reply(option, REP_META_CONTEXT, &payload));
                }
                out.extend(option_reply(option, REP_ACK, &[]));
                Step::Reply(out)
            }
            _ => Self::error(option, REP_ERR_UNSUP, "option not supported"),
        }
    }
}

/// A transmission request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Command flags.
    pub flags: u16,
    /// Command.
    pub kind: u16,
    /// The client's cookie, echoed in the reply.
    pub cookie: u64,
    /// Offset.
    pub offset: u64,
    /// Length.
    pub length: u32,
}

/// Parses a request header.
pub fn parse_request(bytes: &[u8; 28]) -> Result<Request, NbdError> {
    let magic = u32::from_be_bytes(bytes[..4].try_into().expect("4 bytes"));
    if magic != REQUEST_MAGIC {
        return Err(bad(format!("request magic {magic:#x}")));
    }
    Ok(Request {
        flags: u16::from_be_bytes([bytes[4], bytes[5]]),
        kind: u16::from_be_bytes([bytes[6], bytes[7]]),
        cookie: u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes")),
        offset: u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes")),
        length: u32::from_be_bytes(bytes[24..].try_into().expect("4 bytes")),
    })
}

/// Why a `READ` or `BLOCK_STATUS` cannot be served, as the errno to send; `None` if it can.
pub fn check_range(request: &Request, size: u64, structured: bool) -> Option<u32> {
    if request.length == 0 {
        return Some(EINVAL);
    }
    if request.kind == CMD_READ && request.length > MAX_REQUEST {
        // The spec asks for EOVERFLOW when the client can be told why (structured replies).
        return Some(if structured { EOVERFLOW } else { EINVAL });
    }
    match request.offset.checked_add(u64::from(request.length)) {
        Some(end) if end <= size => None,
        _ => Some(EINVAL),
    }
}

/// A simple reply header (the data of a successful read follows it).
pub fn simple_reply(cookie: u64, error: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.to_be_bytes());
    out[8..].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A structured reply chunk header.
pub fn chunk_header(cookie: u64, flags: u16, kind: u16, length: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    out[..4].copy_from_slice(&STRUCTURED_REPLY_MAGIC.to_be_bytes());
    out[4..6].copy_from_slice(&flags.to_be_bytes());
    out[6..8].copy_from_slice(&kind.to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out[16..].copy_from_slice(&length.to_be_bytes());
    out
}

/// The header and offset of the one `OFFSET_DATA` chunk that answers a read of `length` bytes
/// at `offset`; the data follows.
pub fn read_data_chunk(cookie: u64, offset: u64, length: u32) -> [u8; 28] {
    let mut out = [0u8; 28];
    out[..20].copy_from_slice(&chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_OFFSET_DATA,
        length + 8,
    ));
    out[20..].copy_from_slice(&offset.to_be_bytes());
    out
}

/// A final `ERROR` chunk.
pub fn error_chunk(cookie: u64, error: u32, message: &str) -> Vec<u8> {
    let message = &message.as_bytes()[..message.len().min(4096)];
    let mut out = chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_ERROR,
        6 + message.len() as u32,
    )
    .to_vec();
    out.extend_from_slice(&error.to_be_bytes());
    out.extend_from_slice(&(message.len() as u16).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// The final `BLOCK_STATUS` chunk for `extents` (as `ExtentSource::allocation` returns them
/// for the request's range): descriptors of at most `u32::MAX` bytes, one only with `req_one`.
pub fn block_status_chunk(cookie: u64, extents: &[Extent], req_one: bool) -> Vec<u8> {
    let mut descriptors: Vec<(u32, u32)> = Vec::new();
    for e in extents {
        let flags = if e.allocated {
            0
        } else {
            STATE_HOLE | STATE_ZERO
        };
        let mut left = e.length;
        while left > 0 {
            // Keep descriptors a multiple of 512 when they must be split.
            let take = left.min(u64::from(u32::MAX) & !511) as u32;
            descriptors.push((take, flags));
            left -= u64::from(take);
        }
    }
    if req_one {
        descriptors.truncate(1);
    }
    let mut out = chunk_header(
        cookie,
        REPLY_FLAG_DONE,
        REPLY_TYPE_BLOCK_STATUS,
        4 + 8 * descriptors.len() as u32,
    )
    .to_vec();
    out.extend_from_slice(&BASE_ALLOCATION_ID.to_be_bytes());
    for (length, flags) in descriptors {
        out.extend_from_slice(&length.to_be_bytes());
        out.extend_from_slice(&flags.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_greeting_is_nbdmagic_ihaveopt_and_the_flags() {
        assert_eq!(
            hex(&greeting()),
            // "NBDMAGIC" "IHAVEOPT" 0003
            "4e42444d41474943".to_owned() + "49484156454f5054" + "0003"
        );
    }

    #[test]
    fn an_option_header_needs_ihaveopt() {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(b"IHAVEOPT");
        b[8..12].copy_from_slice(&7u32.to_be_bytes());
        b[12..].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(parse_option_header(&b).unwrap(), (7, 9));
        b[0] = b'X';
        assert!(parse_option_header(&b).is_err());
    }

    #[test]
    fn old_clients_are_refused_and_unknown_flags_too() {
        assert!(Negotiation::new("vda", 1, 0).is_err());
        assert!(Negotiation::new("vda", 1, 4 | 1).is_err());
        assert!(Negotiation::new("vda", 1, 3).is_ok());
    }

    fn go_data(name: &str, infos: &[u16]) -> Vec<u8> {
        let mut d = (name.len() as u32).to_be_bytes().to_vec();
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&(infos.len() as u16).to_be_bytes());
        for i in infos {
            d.extend_from_slice(&i.to_be_bytes());
        }
        d
    }

    #[test]
    fn go_replies_info_export_block_size_and_ack_byte_for_byte() {
        let mut n = Negotiation::new("vda", 0x12_3456_789a, 3).unwrap();
        let Step::Transmit(out) = n.option(OPT_GO, &go_data("", &[INFO_BLOCK_SIZE])) else {
            panic!("GO must enter transmission")
        };
        let expected = [
            // REP_INFO, INFO_EXPORT: type 0, size, flags HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN
            "0003e889045565a9",
            "00000007",
            "00000003",
            "0000000c",
            "0000",
            "000000123456789a",
            "0103",
            // REP_INFO, INFO_BLOCK_SIZE: 1, 4096, 32 MiB
            "0003e889045565a9",
            "00000007",
            "00000003",
            "0000000e",
            "0003",
            "00000001",
            "00001000",
            "02000000",
            // ACK
            "0003e889045565a9",
            "00000007",
            "00000001",
            "00000000",
        ]
        .concat();
        assert_eq!(hex(&out), expected);
    }

    #[test]
    fn an_unknown_export_gets_err_unknown_and_export_name_closes() {
        let mut n = Negotiation::new("vda", 10, 3).unwrap();
        let Step::Reply(out) = n.option(OPT_INFO, &go_data("vdb", &[])) else {
            panic!()
        };
        assert_eq!(&out[12..16], &REP_ERR_UNKNOWN.to_be_bytes());
        assert_eq!(n.option(OPT_EXPORT_NAME, b"vdb"), Step::Close(Vec::new()));
    }

    #[test]
    fn export_name_sends_size_flags_and_zeroes_unless_no_zeroes() {
        let mut n = Negotiation::new("vda", 4096, 1).unwrap();
        let Step::Transmit(out) = n.option(OPT_EXPORT_NAME, b"vda") else {
            panic!()
        };
        assert_eq!(out.len(), 8 + 2 + 124);
        assert_eq!(hex(&out[..10]), "00000000000010000103");
        let mut n = Negotiation::new("vda", 4096, 3).unwrap();
        let Step::Transmit(out) = n.option(OPT_EXPORT_NAME, b"") else {
            panic!()
        };
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn meta_contexts_need_structured_replies_and_offer_only_base_allocation() {
        let mut n = Negotiation::new("vda", 10, 3).unwrap();
        let mut data = 0u32.to_be_bytes().to_vec();
        data.extend_from_slice(&2u32.to_be_bytes());
        for q in [BASE_ALLOCATION, "qemu:dirty-bitmap:x"] {
            data.extend_from_slice(&(q.len() as u32).to_be_bytes());
            data.extend_from_slice(q.as_bytes());
        }
        let Step::Reply(out) = n.option(OPT_SET_META_CONTEXT, &data) else {
            panic!()
        };
        assert_eq!(&out[12..16], &REP_ERR_INVALID.to_be_bytes());
        assert!(!n.allocation_context);
        assert_eq!(
            n.option(OPT_STRUCTURED_REPLY, &[]),
            Step::Reply(option_reply(OPT_STRUCTURED_REPLY, REP_ACK, &[]))
        );
        let Step::Reply(out) = n.option(OPT_SET_META_CONTEXT, &data) else {
            panic!()
        };
        let mut payload = 1u32.to_be_bytes().to_vec();
        payload.extend_from_slice(b"base:allocation");
        let mut expected = option_reply(OPT_SET_META_CONTEXT, REP_META_CONTEXT, &payload);
        expected.extend(option_reply(OPT_SET_META_CONTEXT, REP_ACK, &[]));
        assert_eq!(out, expected);
        assert!(n.allocation_context);
        assert_eq!(n.transmission_flags(), 0x0183);
    }

    #[test]
    fn list_abort_starttls_and_unknown_options() {
        let mut n = Negotiation::new("vda", 10, 3).unwrap();
        let Step::Reply(out) = n.option(OPT_LIST, &[]) else {
            panic!()
        };
        let mut expected = option_reply(OPT_LIST, REP_SERVER, b"\x00\x00\x00\x03vda");
        expected.extend(option_reply(OPT_LIST, REP_ACK, &[]));
        assert_eq!(out, expected);
        assert_eq!(
            n.option(OPT_ABORT, &[]),
            Step::Close(option_reply(OPT_ABORT, REP_ACK, &[]))
        );
        let Step::Reply(out) = n.option(OPT_STARTTLS, &[]) else {
            panic!()
        };
        assert_eq!(&out[12..16], &REP_ERR_POLICY.to_be_bytes());
        let Step::Reply(out) = n.option(99, &[]) else {
            panic!()
        };
        assert_eq!(&out[12..16], &REP_ERR_UNSUP.to_be_bytes());
        // Truncated GO data.
        let Step::Reply(out) = n.option(OPT_GO, &[0, 0, 0, 9, b'v']) else {
            panic!()
        };
        assert_eq!(&out[12..16], &REP_ERR_INVALID.to_be_bytes());
    }

    #[test]
    fn requests_parse_and_ranges_are_checked() {
        let mut b = [0u8; 28];
        b[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        b[4..6].copy_from_slice(&CMD_FLAG_REQ_ONE.to_be_bytes());
        b[6..8].copy_from_slice(&CMD_BLOCK_STATUS.to_be_bytes());
        b[8..16].copy_from_slice(&0xdead_beefu64.to_be_bytes());
        b[16..24].copy_from_slice(&4096u64.to_be_bytes());
        b[24..].copy_from_slice(&512u32.to_be_bytes());
        let r = parse_request(&b).unwrap();
        assert_eq!(
            r,
            Request {
                flags: CMD_FLAG_REQ_ONE,
                kind: CMD_BLOCK_STATUS,
                cookie: 0xdead_beef,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(check_range(&r, 4608, true), None);
        assert_eq!(check_range(&r, 4607, true), Some(EINVAL));
        let big = Request {
            kind: CMD_READ,
            length: MAX_REQUEST + 1,
            ..r
        };
        assert_eq!(check_range(&big, u64::MAX, true), Some(EOVERFLOW));
        assert_eq!(check_range(&big, u64::MAX, false), Some(EINVAL));
        let wrap = Request {
            offset: u64::MAX,
            ..r
        };
        assert_eq!(check_range(&wrap, u64::MAX, true), Some(EINVAL));
        b[0] = 0;
        assert!(parse_request(&b).is_err());
    }

    #[test]
    fn replies_are_laid_out_as_the_spec_says() {
        assert_eq!(
            hex(&simple_reply(0x0102030405060708, EIO)),
            "67446698000000050102030405060708"
        );
        assert_eq!(
            hex(&read_data_chunk(7, 0x1000, 512)),
            "668e33ef00010001000000000000000700000208".to_owned() + "0000000000001000"
        );
        let e = error_chunk(7, EIO, "bad");
        assert_eq!(
            hex(&e),
            "668e33ef00018001000000000000000700000009".to_owned() + "00000005" + "0003" + "626164"
        );
        let extents = [
            Extent {
                offset: 0,
                length: 4096,
                allocated: true,
            },
            Extent {
                offset: 4096,
                length: 8192,
                allocated: false,
            },
        ];
        assert_eq!(
            hex(&block_status_chunk(7, &extents, false)),
            "668e33ef00010005000000000000000700000014".to_owned()
                + "00000001"
                + "0000100000000000"
                + "0000200000000003"
        );
        assert_eq!(block_status_chunk(7, &extents, true).len(), 20 + 4 + 8);
        // An extent longer than a descriptor can say is split.
        let huge = [Extent {
            offset: 0,
            length: 5 << 30,
            allocated: false,
        }];
        let chunk = block_status_chunk(1, &huge, false);
        assert_eq!(chunk.len(), 24 + 16);
        let first = u32::from_be_bytes(chunk[24..28].try_into().unwrap());
        let second = u32::from_be_bytes(chunk[32..36].try_into().unwrap());
        assert_eq!(u64::from(first) + u64::from(second), 5 << 30);
        assert_eq!(first % 512, 0);
    }
}
