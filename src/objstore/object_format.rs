//! Stored objects: how every object of a block-layout repository is stored (format v1), with
//! optional zstd and optional client-side encryption; and the keys that open them.
//!
//! # Object format v1 (a stranger's reader needs only this)
//! ```text
//! 0..4   magic "VRBO"
//! 4      version = 1
//! 5      flags: bit 0 = payload is zstd-compressed, bit 1 = encrypted; other bits zero
//! 6..8   zero
//! encrypted (bit 1):  8..32 nonce (24 random bytes), 32.. ciphertext || 16-byte tag:
//!                     XChaCha20-Poly1305 with the repository's cipher key over the payload,
//!                     associated data = bytes 0..8 || kind || 0x00 || name
//! plain:              8..len-32 payload, len-32.. BLAKE3(bytes 0..8 || kind || 0x00 || name
//!                     || payload): a checksum against corruption (no key, so no protection
//!                     against someone who can write the store)
//! ```
//! `kind` is `block`, `manifest`, `config` or `key`; `name` is the object's key in the
//! repository (for a block, its id in lowercase hex). Binding both into the tag means an object
//! copied over another name, or a flag flipped (say, "not encrypted"), fails to open. The
//! payload, once decrypted and decompressed, is the object's content; a block's content must
//! hash to its id.
//!
//! # Keys
//! An encrypted repository has one random 32-byte **data key**. From it BLAKE3's `derive_key`
//! makes the cipher key (context `virt-rbd-backup 2026-12 object cipher v1`) and the block-id
//! key (`virt-rbd-backup 2026-12 block id v1`). Block ids are `BLAKE3::keyed_hash(id key,
//! content)`, so the store cannot tell which blocks hold what (say, the zeros or a known
//! golden image); in a plain repository they are plain BLAKE3, the hashes the block tables
//! already hold.
//!
//! The data key is stored only wrapped: object `keys/<key id>` is the data key encoded (kind
//! `key`) with a **key-file key**: 32 random bytes in a file of two lines,
//! `virt-rbd-backup key v1` and the bytes in standard base64, mode 0600. The key id is the
//! first 8 bytes, in hex, of `derive_key("virt-rbd-backup 2026-12 key id v1", key-file key)`.
//! Rotating a key file is adding a new `keys/<id>` (the same data key wrapped by the new
//! key-file key) and removing the old one: no block is rewritten. A data key that leaked
//! cannot be rotated: that takes a new repository (and a copy of what must be kept).
//! Lose every key file and the repository is unreadable: keep a copy of one off the
//! hypervisors (a password manager, paper in a safe).

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadInPlace, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

const MAGIC: &[u8; 4] = b"VRBO";
const VERSION: u8 = 1;
const FLAG_ZSTD: u8 = 1;
const FLAG_ENCRYPTED: u8 = 2;
const HEADER_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const CHECKSUM_LEN: usize = 32;
const KEY_FILE_HEADER: &str = "virt-rbd-backup key v1";
const CIPHER_CONTEXT: &str = "virt-rbd-backup 2026-12 object cipher v1";
const BLOCK_ID_CONTEXT: &str = "virt-rbd-backup 2026-12 block id v1";
const KEY_ID_CONTEXT: &str = "virt-rbd-backup 2026-12 key id v1";

/// What an object is; part of what its tag or checksum covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// A block of disk content, named by its id.
    Block,
    /// A backup's manifest.
    Manifest,
    /// The repository's configuration.
    Config,
    /// A wrapped data key.
    Key,
}

impl ObjectKind {
    fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Block => "block",
            ObjectKind::Manifest => "manifest",
            ObjectKind::Config => "config",
            ObjectKind::Key => "key",
        }
    }
}

/// Why an object cannot be opened; each names the object.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    /// Not an object of this format (wrong magic, too short, unknown version or flags).
    #[error("object {name} is not a virt-rbd-backup object: {reason}")]
    NotAnObject { name: String, reason: String },
    /// The tag does not match: a wrong key, or the object was changed or moved.
    #[error("object {name} does not open with this repository's key: wrong key, or the object was changed or moved")]
    Unauthentic { name: String },
    /// A plain object whose checksum, compression or content does not hold.
    #[error("object {name} is damaged: {reason}")]
    Corrupt { name: String, reason: String },
    /// A plain object in an encrypted repository: refused, or anyone who can write the store
    /// could slip in content.
    #[error("object {name} is not encrypted, but this repository is: refused (someone wrote into the store, or it is another repository's)")]
    NotEncrypted { name: String },
    /// An encrypted object and no key to open it.
    #[error("object {name} is encrypted: give the repository's key file (repo_key_file)")]
    NoKey { name: String },
    /// The key file cannot be used.
    #[error("key file: {0}")]
    KeyFile(String),
    /// No randomness from the OS for a nonce or a key.
    #[error("no randomness from the operating system: {0}")]
    Random(String),
}

/// The id of a block: its content's BLAKE3 hash, keyed in an encrypted repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    /// The id in lowercase hex, as in object names.
    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The block's object key: `blocks/<first two hex digits>/<hex>` (256 folders keep a
    /// folder repository's directories small).
    pub fn object_key(&self) -> String {
        let hex = self.hex();
        format!("blocks/{}/{hex}", &hex[..2])
    }
}

/// A repository's data key and what is derived from it.
pub struct DataKey {
    bytes: Zeroizing<[u8; 32]>,
    cipher: XChaCha20Poly1305,
    id_key: Zeroizing<[u8; 32]>,
}

impl DataKey {
    /// A new random data key, for a new repository.
    pub fn generate() -> Result<Self, FormatError> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::getrandom(bytes.as_mut()).map_err(|e| FormatError::Random(e.to_string()))?;
        Ok(Self::from_bytes(&bytes))
    }

    fn from_bytes(bytes: &[u8; 32]) -> Self {
        let cipher_key = Zeroizing::new(blake3::derive_key(CIPHER_CONTEXT, bytes));
        DataKey {
            bytes: Zeroizing::new(*bytes),
            cipher: XChaCha20Poly1305::new(cipher_key.as_ref().into()),
            id_key: Zeroizing::new(blake3::derive_key(BLOCK_ID_CONTEXT, bytes)),
        }
    }
}

/// A key-file key: opens the repository's wrapped data key.
pub struct KeyFileKey {
    key: DataKey,
    id: String,
}

impl KeyFileKey {
    /// A new random key and the text of its key file (to be written with mode 0600).
    pub fn generate() -> Result<(Self, Zeroizing<String>), FormatError> {
        let key = DataKey::generate()?;
        let text = Zeroizing::new(format!(
            "{KEY_FILE_HEADER}\n{}\n",
            base64::engine::general_purpose::STANDARD.encode(key.bytes.as_ref())
        ));
        Ok((Self::from_data_key(key), text))
    }

    /// Reads a key file's text (the format in the module doc).
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        let bad = |reason: &str| FormatError::KeyFile(reason.to_string());
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        if lines.next() != Some(KEY_FILE_HEADER) {
            return Err(bad(&format!("the first line must be '{KEY_FILE_HEADER}'")));
        }
        let encoded = lines
            .next()
            .ok_or_else(|| bad("no key after the first line"))?;
        if lines.next().is_some() {
            return Err(bad("more than two lines"));
        }
        let decoded = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| bad("the second line is not base64"))?,
        );
        let bytes: [u8; 32] = decoded
            .as_slice()
            .try_into()
            .map_err(|_| bad("the key must be 32 bytes"))?;
        let bytes = Zeroizing::new(bytes);
        Ok(Self::from_data_key(DataKey::from_bytes(&bytes)))
    }

    fn from_data_key(key: DataKey) -> Self {
        let digest = blake3::derive_key(KEY_ID_CONTEXT, key.bytes.as_ref());
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        KeyFileKey { key, id }
    }

    /// The key's id, which names its `keys/<id>` object and appears in messages.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The object key of the data key wrapped by this key.
    pub fn wrapped_key_name(&self) -> String {
        format!("keys/{}", self.id)
    }

    /// `data_key` encrypted with this key, to be stored under [`Self::wrapped_key_name`].
    pub fn wrap(&self, data_key: &DataKey) -> Result<Vec<u8>, FormatError> {
        encode_with(
            Some(&self.key),
            ObjectKind::Key,
            &self.wrapped_key_name(),
            data_key.bytes.as_ref(),
            None,
        )
    }

    /// The data key out of its wrapped object.
    pub fn unwrap_key(&self, stored: &[u8]) -> Result<DataKey, FormatError> {
        let name = self.wrapped_key_name();
        let bytes = Zeroizing::new(decode_with(
            Some(&self.key),
            ObjectKind::Key,
            &name,
            stored,
            32,
        )?);
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| FormatError::Corrupt {
                name,
                reason: "a data key must be 32 bytes".to_string(),
            })?;
        let bytes = Zeroizing::new(bytes);
        Ok(DataKey::from_bytes(&bytes))
    }
}

/// How a repository's objects are encoded: plain or encrypted, compressed or not.
pub struct ObjectCodec {
    key: Option<DataKey>,
    zstd_level: Option<i32>,
}

impl ObjectCodec {
    /// A codec for a plain repository (`key` `None`) or an encrypted one; `zstd_level`
    /// compresses what it encodes (objects that do not shrink are stored uncompressed).
    pub fn new(key: Option<DataKey>, zstd_level: Option<i32>) -> Self {
        ObjectCodec { key, zstd_level }
    }

    /// The data key of an encrypted repository.
    pub fn key(&self) -> Option<&DataKey> {
        self.key.as_ref()
    }

    /// The data key, to build a codec with other settings from it.
    pub fn into_key(self) -> Option<DataKey> {
        self.key
    }

    /// The id of a block with this content.
    pub fn block_id(&self, content: &[u8]) -> BlockId {
        BlockId(match &self.key {
            Some(key) => *blake3::keyed_hash(&key.id_key, content).as_bytes(),
            None => *blake3::hash(content).as_bytes(),
        })
    }

    /// Seals `content` as an object of `kind` stored under `name`.
    pub fn encode(
        &self,
        kind: ObjectKind,
        name: &str,
        content: &[u8],
    ) -> Result<Vec<u8>, FormatError> {
        encode_with(self.key.as_ref(), kind, name, content, self.zstd_level)
    }

    /// Opens an object of `kind` stored under `name`; its content may be at most `max_len`
    /// bytes (a bound against decompression bombs).
    pub fn decode(
        &self,
        kind: ObjectKind,
        name: &str,
        stored: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, FormatError> {
        decode_with(self.key.as_ref(), kind, name, stored, max_len)
    }

    /// Opens block `id` and checks that its content has that id.
    pub fn decode_block(
        &self,
        id: &BlockId,
        stored: &[u8],
        max_len: usize,
    ) -> Result<Vec<u8>, FormatError> {
        let name = id.hex();
        let content = self.decode(ObjectKind::Block, &name, stored, max_len)?;
        if self.block_id(&content) != *id {
            return Err(FormatError::Corrupt {
                name: id.object_key(),
                reason: "its content does not hash to its id".to_string(),
            });
        }
        Ok(content)
    }
}

fn associated_data(header: &[u8], kind: ObjectKind, name: &str) -> Vec<u8> {
    let mut data = Vec::with_capacity(header.len() + name.len() + 16);
    data.extend_from_slice(header);
    data.extend_from_slice(kind.as_str().as_bytes());
    data.push(0);
    data.extend_from_slice(name.as_bytes());
    data
}

fn encode_with(
    key: Option<&DataKey>,
    kind: ObjectKind,
    name: &str,
    content: &[u8],
    zstd_level: Option<i32>,
) -> Result<Vec<u8>, FormatError> {
    let compressed = match zstd_level {
        Some(level) => zstd::bulk::compress(content, level)
            .ok()
            .filter(|c| c.len() < content.len()),
        None => None,
    };
    let mut flags = 0;
    if compressed.is_some() {
        flags |= FLAG_ZSTD;
    }
    if key.is_some() {
        flags |= FLAG_ENCRYPTED;
    }
    let payload = compressed.as_deref().unwrap_or(content);
    let header = [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], VERSION, flags, 0, 0];
    let aad = associated_data(&header, kind, name);
    // Sized once: the object is built in this one buffer (an upload worker holds it and the
    // block, no third copy).
    let mut out = Vec::with_capacity(header.len() + NONCE_LEN + payload.len() + 32);
    out.extend_from_slice(&header);
    match key {
        Some(key) => {
            let mut nonce = [0u8; NONCE_LEN];
            getrandom::getrandom(&mut nonce).map_err(|e| FormatError::Random(e.to_string()))?;
            out.extend_from_slice(&nonce);
            let start = out.len();
            out.extend_from_slice(payload);
            // Encrypted where it lies; the tag follows the ciphertext, as `encrypt` lays it out.
            let tag = key
                .cipher
                .encrypt_in_place_detached(XNonce::from_slice(&nonce), &aad, &mut out[start..])
                // Only fails for payloads beyond 256 GiB.
                .map_err(|_| FormatError::Corrupt {
                    name: name.to_string(),
                    reason: "too large to encrypt".to_string(),
                })?;
            out.extend_from_slice(&tag);
        }
        None => {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&aad);
            hasher.update(payload);
            out.extend_from_slice(payload);
            out.extend_from_slice(hasher.finalize().as_bytes());
        }
    }
    Ok(out)
}

fn decode_with(
    key: Option<&DataKey>,
    kind: ObjectKind,
    name: &str,
    stored: &[u8],
    max_len: usize,
) -> Result<Vec<u8>, FormatError> {
    let not_object = |reason: &str| FormatError::NotAnObject {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    let corrupt = |reason: String| FormatError::Corrupt {
        name: name.to_string(),
        reason,
    };
    if stored.len() < HEADER_LEN || &stored[..4] != MAGIC {
        return Err(not_object("no VRBO header"));
    }
    let (header, body) = stored.split_at(HEADER_LEN);
    if header[4] != VERSION {
        return Err(not_object(&format!(
            "format version {} (this program reads version {VERSION}: upgrade it)",
            header[4]
        )));
    }
    let flags = header[5];
    if flags & !(FLAG_ZSTD | FLAG_ENCRYPTED) != 0 || header[6] != 0 || header[7] != 0 {
        return Err(not_object("unknown flags"));
    }
    let aad = associated_data(header, kind, name);
    let payload = match (flags & FLAG_ENCRYPTED != 0, key) {
        (true, None) => {
            return Err(FormatError::NoKey {
                name: name.to_string(),
            })
        }
        (false, Some(_)) => {
            return Err(FormatError::NotEncrypted {
                name: name.to_string(),
            })
        }
        (true, Some(key)) => {
            if body.len() < NONCE_LEN + TAG_LEN {
                return Err(corrupt("shorter than a nonce and a tag".to_string()));
            }
            let (nonce, ciphertext) = body.split_at(NONCE_LEN);
            key.cipher
                .decrypt(
                    XNonce::from_slice(nonce),
                    Payload {
                        msg: ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| FormatError::Unauthentic {
                    name: name.to_string(),
                })?
        }
        (false, None) => {
            if body.len() < CHECKSUM_LEN {
                return Err(corrupt("shorter than its checksum".to_string()));
            }
            let (payload, checksum) = body.split_at(body.len() - CHECKSUM_LEN);
            let mut hasher = blake3::Hasher::new();
            hasher.update(&aad);
            hasher.update(payload);
            // blake3::Hash compares in constant time.
            if hasher.finalize() != blake3::Hash::from_bytes(checksum.try_into().unwrap_or([0; 32]))
            {
                return Err(corrupt(
                    "its checksum does not match (changed, truncated or stored under another name)"
                        .to_string(),
                ));
            }
            payload.to_vec()
        }
    };
    let content = if flags & FLAG_ZSTD != 0 {
        zstd::bulk::decompress(&payload, max_len).map_err(|e| {
            corrupt(format!(
                "zstd: {e} (or its content is over {max_len} bytes)"
            ))
        })?
    } else {
        payload
    };
    if content.len() > max_len {
        return Err(corrupt(format!(
            "{} bytes, more than the {max_len} allowed",
            content.len()
        )));
    }
    Ok(content)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn sample() -> Vec<u8> {
        let mut v: Vec<u8> = (0..4 * MIB).map(|i| (i % 251) as u8).collect();
        v[..MIB].fill(0);
        v
    }

    fn encrypted(level: Option<i32>) -> ObjectCodec {
        ObjectCodec::new(Some(DataKey::generate().unwrap()), level)
    }

    #[test]
    fn round_trips_every_mode() {
        let content = sample();
        for codec in [
            ObjectCodec::new(None, None),
            ObjectCodec::new(None, Some(3)),
            encrypted(None),
            encrypted(Some(3)),
        ] {
            let id = codec.block_id(&content);
            let object = codec
                .encode(ObjectKind::Block, &id.hex(), &content)
                .unwrap();
            assert_eq!(codec.decode_block(&id, &object, 4 * MIB).unwrap(), content);
            if codec.zstd_level.is_some() {
                assert!(object.len() < content.len() / 2, "{}", object.len());
            }
            if codec.key.is_some() {
                // No long run of the content's bytes shows through.
                assert!(!object
                    .windows(64)
                    .any(|w| w == &content[2 * MIB..2 * MIB + 64]));
                assert!(!object.windows(4096).any(|w| w.iter().all(|&b| b == 0)));
            }
        }
    }

    #[test]
    fn plain_ids_are_the_block_tables_hashes_and_keyed_ids_are_not() {
        let content = sample();
        assert_eq!(
            ObjectCodec::new(None, None).block_id(&content).0,
            *blake3::hash(&content).as_bytes()
        );
        let a = encrypted(None);
        let b = encrypted(None);
        assert_ne!(
            a.block_id(&content),
            ObjectCodec::new(None, None).block_id(&content)
        );
        assert_ne!(a.block_id(&content), b.block_id(&content));
        assert_eq!(a.block_id(&content), a.block_id(&content));
    }

    #[test]
    fn a_wrong_key_a_flipped_byte_or_a_moved_object_never_opens() {
        let codec = encrypted(Some(3));
        let other = encrypted(Some(3));
        let object = codec
            .encode(ObjectKind::Manifest, "snapshots/x/1", b"manifest")
            .unwrap();
        let name = "snapshots/x/1".to_string();
        assert_eq!(
            other.decode(ObjectKind::Manifest, "snapshots/x/1", &object, MIB),
            Err(FormatError::Unauthentic { name: name.clone() })
        );
        for at in [5, 9, 40, object.len() - 1] {
            let mut flipped = object.clone();
            flipped[at] ^= 0x01;
            let err = codec
                .decode(ObjectKind::Manifest, "snapshots/x/1", &flipped, MIB)
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    FormatError::Unauthentic { .. } | FormatError::NotAnObject { .. }
                ),
                "byte {at}: {err:?}"
            );
        }
        assert!(codec
            .decode(ObjectKind::Manifest, "snapshots/x/2", &object, MIB)
            .is_err());
        assert!(codec
            .decode(ObjectKind::Config, "snapshots/x/1", &object, MIB)
            .is_err());
        assert!(codec
            .decode(ObjectKind::Manifest, "snapshots/x/1", &object[..20], MIB)
            .is_err());
    }

    #[test]
    fn plain_objects_detect_damage_and_are_refused_by_encrypted_repositories() {
        let plain = ObjectCodec::new(None, Some(3));
        let content = sample();
        let id = plain.block_id(&content);
        let object = plain
            .encode(ObjectKind::Block, &id.hex(), &content)
            .unwrap();
        let mut flipped = object.clone();
        flipped[100] ^= 0x80;
        let err = plain.decode_block(&id, &flipped, 4 * MIB).unwrap_err();
        assert!(matches!(err, FormatError::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains(&id.hex()), "{err}");
        assert!(matches!(
            encrypted(None).decode(ObjectKind::Block, &id.hex(), &object, 4 * MIB),
            Err(FormatError::NotEncrypted { .. })
        ));
        let secret = encrypted(None)
            .encode(ObjectKind::Config, "config", b"x")
            .unwrap();
        assert!(matches!(
            plain.decode(ObjectKind::Config, "config", &secret, MIB),
            Err(FormatError::NoKey { .. })
        ));
    }

    #[test]
    fn a_block_whose_content_is_not_its_id_is_refused() {
        let codec = encrypted(None);
        let one = codec.block_id(b"one");
        // Validly encoded under block one's name, but with other content (a buggy writer).
        let object = codec.encode(ObjectKind::Block, &one.hex(), b"two").unwrap();
        let err = codec.decode_block(&one, &object, MIB).unwrap_err();
        assert!(err.to_string().contains("does not hash to its id"), "{err}");
    }

    #[test]
    fn decompression_is_bounded() {
        let codec = ObjectCodec::new(None, Some(3));
        let object = codec
            .encode(ObjectKind::Manifest, "m", &vec![0u8; 8 * MIB])
            .unwrap();
        let err = codec
            .decode(ObjectKind::Manifest, "m", &object, 4 * MIB)
            .unwrap_err();
        assert!(matches!(err, FormatError::Corrupt { .. }), "{err:?}");
    }

    #[test]
    fn key_files_wrap_and_rotate_the_data_key() {
        let (first, first_text) = KeyFileKey::generate().unwrap();
        let (second, second_text) = KeyFileKey::generate().unwrap();
        assert!(first_text.starts_with("virt-rbd-backup key v1\n"));
        let data = DataKey::generate().unwrap();
        let content = b"what the repository holds";
        let before = ObjectCodec::new(Some(data), None);
        let object = before.encode(ObjectKind::Manifest, "m", content).unwrap();
        // Rotation: the same data key wrapped by a new key file; the old one is dropped.
        let wrapped_first = first.wrap(before.key.as_ref().unwrap()).unwrap();
        let data_again = KeyFileKey::parse(&first_text)
            .unwrap()
            .unwrap_key(&wrapped_first)
            .unwrap();
        let wrapped_second = second.wrap(&data_again).unwrap();
        let reopened = KeyFileKey::parse(&second_text).unwrap();
        assert_eq!(reopened.id(), second.id());
        assert_ne!(first.id(), second.id());
        let after = ObjectCodec::new(Some(reopened.unwrap_key(&wrapped_second).unwrap()), None);
        assert_eq!(
            after
                .decode(ObjectKind::Manifest, "m", &object, MIB)
                .unwrap(),
            content
        );
        // The wrong key file for a wrapped key.
        assert!(matches!(
            second.unwrap_key(&wrapped_first),
            Err(FormatError::Unauthentic { .. })
        ));
    }

    #[test]
    fn bad_key_files_say_what_is_wrong() {
        for (text, says) in [
            ("", "first line"),
            ("virt-rbd-backup key v1\n", "no key"),
            ("virt-rbd-backup key v1\n***\n", "base64"),
            ("virt-rbd-backup key v1\nAAAA\n", "32 bytes"),
        ] {
            let err = KeyFileKey::parse(text).err().unwrap().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }
}
