//! BitTorrent v1 metainfo (`.torrent`) parsing, validation and creation.
//!
//! [`Metainfo::parse`] turns untrusted `.torrent` bytes into a validated
//! [`Metainfo`]: the info-hash is SHA-1 over the exact raw bytes of the `info`
//! dictionary as it appears in the file, sizes and piece counts are checked
//! for consistency, and every path component is checked so that joining it
//! under a download directory cannot escape that directory (no `..`, `.`,
//! empty, `/`, `\`, NUL). v2-only torrents are rejected; hybrid torrents are
//! read through their v1 part (and keep the v1 info-hash).
//!
//! Creation is split so that the expensive part can run on a worker pool:
//! the caller hashes file data with [`PieceHasher`] / [`hash_pieces_of_reader`]
//! / [`hash_pieces_of_readers`], then [`build_torrent`] encodes the result.
//!
//! This module does no file-system or network I/O of its own (the hashing
//! helpers only read from the `Read`ers they are handed) and never panics on
//! hostile input. Windows-specific name hazards (`C:`, `CON`, `:` streams)
//! and case-insensitive collisions are left to the storage layer.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read};
use std::path::PathBuf;

use sha1::{Digest, Sha1};

use super::bencode::{self, BencodeError, DecodeOptions, OwnedValue, Value};

/// Largest `.torrent` file accepted by [`Metainfo::parse`].
pub const MAX_TORRENT_SIZE: usize = 32 * 1024 * 1024;
/// Largest accepted piece length (64 MiB).
pub const MAX_PIECE_LENGTH: u32 = 64 * 1024 * 1024;
/// Most files accepted in one torrent.
pub const MAX_FILES: usize = 1 << 20;
/// Most path components (directories + file name) in one file path.
pub const MAX_PATH_DEPTH: usize = 64;
/// Longest accepted path component in bytes (the common file-system limit).
pub const MAX_COMPONENT_LEN: usize = 255;

/// One file of the torrent's concatenated data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// Path components below the torrent's `name` directory. Empty for a
    /// single-file torrent, whose one file is stored as `name` itself.
    pub path: Vec<String>,
    /// File length in bytes.
    pub length: u64,
    /// Byte offset of the file's first byte in the concatenated torrent data.
    pub offset: u64,
}

/// A validated v1 torrent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metainfo {
    /// Primary tracker URL (`announce`), if any.
    pub announce: Option<String>,
    /// BEP 12 tracker tiers (`announce-list`); non-UTF-8 entries are dropped.
    pub announce_list: Vec<Vec<String>>,
    /// SHA-1 of the raw `info` dictionary bytes.
    pub info_hash: [u8; 20],
    /// Suggested file name (single-file) or directory name (multi-file).
    pub name: String,
    /// Bytes per piece (the last piece may be shorter).
    pub piece_length: u32,
    /// SHA-1 of every piece, in order.
    pub pieces: Vec<[u8; 20]>,
    /// Files in torrent order; see [`FileEntry::path`].
    pub files: Vec<FileEntry>,
    /// Sum of all file lengths.
    pub total_length: u64,
    /// Whether the torrent uses the multi-file (`files`) layout.
    pub multi_file: bool,
    /// BEP 27 private flag (`private=1`): no DHT/PEX/LSD.
    pub private: bool,
    /// The raw bencoded `info` dictionary, exactly as in the file: what BEP 9
    /// metadata exchange serves, and what the info-hash is computed over.
    pub info_dict: Vec<u8>,
}

/// The part of one piece that lies in one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileSpan {
    /// Index into [`Metainfo::files`].
    pub file_index: usize,
    /// Byte offset inside that file.
    pub offset: u64,
    /// Number of bytes.
    pub len: u32,
}

/// Why a torrent was rejected or could not be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetainfoError {
    /// The file exceeds [`MAX_TORRENT_SIZE`].
    TooLarge {
        /// Actual size in bytes.
        len: usize,
    },
    /// The file is not valid bencode.
    Bencode(BencodeError),
    /// The top level (or `info`) is not a dictionary.
    NotADict,
    /// A required key is absent.
    MissingField(&'static str),
    /// A key has the wrong bencode type or an out-of-range value.
    WrongType(&'static str),
    /// A text field is not valid UTF-8.
    NotUtf8(&'static str),
    /// The torrent is BitTorrent v2 only (no v1 `pieces`).
    V2Only,
    /// `piece length` is zero, negative or larger than [`MAX_PIECE_LENGTH`].
    BadPieceLength(i64),
    /// `pieces` length is not a multiple of 20.
    BadPiecesLength(usize),
    /// The number of piece hashes does not match the total length.
    PieceCountMismatch {
        /// ceil(total_length / piece_length).
        expected: u64,
        /// Hashes present.
        actual: u64,
    },
    /// A file length is negative.
    BadFileLength(i64),
    /// The total length overflows u64.
    TotalTooLarge,
    /// Both `length` and `files` are present.
    AmbiguousLayout,
    /// `files` is empty.
    NoFiles,
    /// More than [`MAX_FILES`] files.
    TooManyFiles(usize),
    /// The torrent contains no data (total length 0).
    Empty,
    /// An unsafe or malformed path; `file` is the file index (`None` for `name`).
    BadPath {
        /// Offending file index, or `None` for the torrent name.
        file: Option<usize>,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two files have the same path.
    DuplicatePath(usize),
}

impl fmt::Display for MetainfoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetainfoError::TooLarge { len } => write!(
                f,
                "torrent file is {len} bytes, more than the {MAX_TORRENT_SIZE}-byte limit"
            ),
            MetainfoError::Bencode(e) => write!(f, "torrent file is not valid bencode: {e}"),
            MetainfoError::NotADict => write!(f, "torrent (or its info) is not a dictionary"),
            MetainfoError::MissingField(k) => write!(f, "torrent is missing the '{k}' field"),
            MetainfoError::WrongType(k) => {
                write!(f, "torrent field '{k}' has the wrong type or value")
            }
            MetainfoError::NotUtf8(k) => write!(f, "torrent field '{k}' is not valid UTF-8"),
            MetainfoError::V2Only => write!(
                f,
                "torrent is BitTorrent v2 only; only v1 and hybrid torrents are supported"
            ),
            MetainfoError::BadPieceLength(n) => write!(
                f,
                "piece length {n} is invalid (must be 1..={MAX_PIECE_LENGTH})"
            ),
            MetainfoError::BadPiecesLength(n) => {
                write!(f, "'pieces' is {n} bytes, not a multiple of 20")
            }
            MetainfoError::PieceCountMismatch { expected, actual } => write!(
                f,
                "torrent has {actual} piece hashes but its size needs {expected}"
            ),
            MetainfoError::BadFileLength(n) => write!(f, "file length {n} is negative"),
            MetainfoError::TotalTooLarge => write!(f, "total torrent size overflows 64 bits"),
            MetainfoError::AmbiguousLayout => {
                write!(f, "torrent has both 'length' and 'files'")
            }
            MetainfoError::NoFiles => write!(f, "multi-file torrent has an empty 'files' list"),
            MetainfoError::TooManyFiles(n) => {
                write!(
                    f,
                    "torrent has {n} files, more than the limit of {MAX_FILES}"
                )
            }
            MetainfoError::Empty => write!(f, "torrent contains no data"),
            MetainfoError::BadPath {
                file: Some(i),
                reason,
            } => {
                write!(f, "path of file {i} is unsafe: {reason}")
            }
            MetainfoError::BadPath { file: None, reason } => {
                write!(f, "torrent name is unsafe: {reason}")
            }
            MetainfoError::DuplicatePath(i) => {
                write!(f, "file {i} has the same path as an earlier file")
            }
        }
    }
}

impl std::error::Error for MetainfoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            MetainfoError::Bencode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<BencodeError> for MetainfoError {
    fn from(e: BencodeError) -> Self {
        MetainfoError::Bencode(e)
    }
}

/// Checks one path component (or the torrent name) for safety.
fn check_component(c: &str, file: Option<usize>) -> Result<(), MetainfoError> {
    let reason = if c.is_empty() {
        "empty component"
    } else if c == "." || c == ".." {
        "'.' or '..' component"
    } else if c.contains('/') || c.contains('\\') {
        "component contains a path separator"
    } else if c.contains('\0') {
        "component contains NUL"
    } else if c.len() > MAX_COMPONENT_LEN {
        "component longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(MetainfoError::BadPath { file, reason })
}

fn check_path(path: &[String], file: usize) -> Result<(), MetainfoError> {
    if path.is_empty() {
        return Err(MetainfoError::BadPath {
            file: Some(file),
            reason: "empty path",
        });
    }
    if path.len() > MAX_PATH_DEPTH {
        return Err(MetainfoError::BadPath {
            file: Some(file),
            reason: "too many path components",
        });
    }
    path.iter().try_for_each(|c| check_component(c, Some(file)))
}

fn check_piece_length(n: i64) -> Result<u32, MetainfoError> {
    match u32::try_from(n) {
        Ok(p) if p > 0 && p <= MAX_PIECE_LENGTH => Ok(p),
        _ => Err(MetainfoError::BadPieceLength(n)),
    }
}

fn file_length(v: Option<&Value<'_>>) -> Result<u64, MetainfoError> {
    let n = v
        .ok_or(MetainfoError::MissingField("length"))?
        .as_int()
        .ok_or(MetainfoError::WrongType("length"))?;
    u64::try_from(n).map_err(|_| MetainfoError::BadFileLength(n))
}

/// Reads a text field, falling back to the `<key>.utf-8` variant some older
/// clients wrote when the plain field is in a legacy encoding.
fn text_field(
    dict: &Value<'_>,
    key: &'static str,
    utf8_key: &'static str,
) -> Result<Option<String>, MetainfoError> {
    let Some(v) = dict.get(key.as_bytes()) else {
        return Ok(None);
    };
    let b = v.as_bytes().ok_or(MetainfoError::WrongType(key))?;
    if let Ok(s) = std::str::from_utf8(b) {
        return Ok(Some(s.to_owned()));
    }
    match dict.get(utf8_key.as_bytes()).and_then(Value::as_str) {
        Some(s) => Ok(Some(s.to_owned())),
        None => Err(MetainfoError::NotUtf8(key)),
    }
}

/// `Ok(None)` when a component is not UTF-8 (the caller may try `path.utf-8`).
fn path_list(v: &Value<'_>, file: usize) -> Result<Option<Vec<String>>, MetainfoError> {
    let list = v.as_list().ok_or(MetainfoError::WrongType("path"))?;
    if list.len() > MAX_PATH_DEPTH {
        // Checked before allocating strings for a hostile list.
        return Err(MetainfoError::BadPath {
            file: Some(file),
            reason: "too many path components",
        });
    }
    let mut out = Vec::with_capacity(list.len());
    for c in list {
        let b = c.as_bytes().ok_or(MetainfoError::WrongType("path"))?;
        match std::str::from_utf8(b) {
            Ok(s) => out.push(s.to_owned()),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(out))
}

fn file_path(entry: &Value<'_>, file: usize) -> Result<Vec<String>, MetainfoError> {
    let plain = entry
        .get(b"path")
        .ok_or(MetainfoError::MissingField("path"))?;
    if let Some(p) = path_list(plain, file)? {
        return Ok(p);
    }
    match entry.get(b"path.utf-8").map(|v| path_list(v, file)) {
        Some(Ok(Some(p))) => Ok(p),
        _ => Err(MetainfoError::NotUtf8("path")),
    }
}

fn parse_announce_list(v: Option<&Value<'_>>) -> Vec<Vec<String>> {
    let Some(tiers) = v.and_then(Value::as_list) else {
        return Vec::new();
    };
    tiers
        .iter()
        .filter_map(Value::as_list)
        .map(|tier| {
            tier.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|tier| !tier.is_empty())
        .collect()
}

/// SHA-1 of `data` as a plain array.
pub fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// `d[8:announce..]4:info<info>e`: keys in sorted order, the info bytes as given.
fn torrent_with_info(info: &[u8], announce: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(info.len() + 64);
    out.push(b'd');
    if let Some(a) = announce {
        bencode::encode_bytes(b"announce", &mut out);
        bencode::encode_bytes(a.as_bytes(), &mut out);
    }
    bencode::encode_bytes(b"info", &mut out);
    out.extend_from_slice(info);
    out.push(b'e');
    out
}

impl Metainfo {
    /// Parses and validates untrusted `.torrent` bytes.
    pub fn parse(torrent: &[u8]) -> Result<Metainfo, MetainfoError> {
        if torrent.len() > MAX_TORRENT_SIZE {
            return Err(MetainfoError::TooLarge { len: torrent.len() });
        }
        let opts = DecodeOptions {
            max_len: MAX_TORRENT_SIZE,
            ..DecodeOptions::default()
        };
        let root = bencode::decode_with(torrent, &opts)?;
        if root.as_dict().is_none() {
            return Err(MetainfoError::NotADict);
        }
        let info_raw = bencode::find_raw_with(torrent, b"info", &opts)?
            .ok_or(MetainfoError::MissingField("info"))?;
        let info = root
            .get(b"info")
            .ok_or(MetainfoError::MissingField("info"))?;
        if info.as_dict().is_none() {
            return Err(MetainfoError::NotADict);
        }

        let announce = match root.get(b"announce") {
            None => None,
            Some(v) => Some(
                v.as_bytes()
                    .ok_or(MetainfoError::WrongType("announce"))
                    .and_then(|b| {
                        std::str::from_utf8(b).map_err(|_| MetainfoError::NotUtf8("announce"))
                    })?
                    .to_owned(),
            ),
        };
        let announce_list = parse_announce_list(root.get(b"announce-list"));

        let pieces_raw = match info.get(b"pieces") {
            Some(v) => v.as_bytes().ok_or(MetainfoError::WrongType("pieces"))?,
            None if info.get(b"meta version").is_some() || info.get(b"file tree").is_some() => {
                return Err(MetainfoError::V2Only);
            }
            None => return Err(MetainfoError::MissingField("pieces")),
        };
        if pieces_raw.len() % 20 != 0 {
            return Err(MetainfoError::BadPiecesLength(pieces_raw.len()));
        }
        let piece_length = check_piece_length(
            info.get(b"piece length")
                .ok_or(MetainfoError::MissingField("piece length"))?
                .as_int()
                .ok_or(MetainfoError::WrongType("piece length"))?,
        )?;
        let name =
            text_field(info, "name", "name.utf-8")?.ok_or(MetainfoError::MissingField("name"))?;
        check_component(&name, None)?;

        let (files, multi_file) = match (info.get(b"length"), info.get(b"files")) {
            (Some(_), Some(_)) => return Err(MetainfoError::AmbiguousLayout),
            (Some(len), None) => {
                let length = file_length(Some(len))?;
                (
                    vec![FileEntry {
                        path: Vec::new(),
                        length,
                        offset: 0,
                    }],
                    false,
                )
            }
            (None, Some(list)) => {
                let list = list.as_list().ok_or(MetainfoError::WrongType("files"))?;
                if list.is_empty() {
                    return Err(MetainfoError::NoFiles);
                }
                if list.len() > MAX_FILES {
                    return Err(MetainfoError::TooManyFiles(list.len()));
                }
                let mut files = Vec::with_capacity(list.len());
                for (i, entry) in list.iter().enumerate() {
                    if entry.as_dict().is_none() {
                        return Err(MetainfoError::WrongType("files"));
                    }
                    let length = file_length(entry.get(b"length"))?;
                    let path = file_path(entry, i)?;
                    check_path(&path, i)?;
                    files.push(FileEntry {
                        path,
                        length,
                        offset: 0,
                    });
                }
                let mut seen = HashSet::with_capacity(files.len());
                for (i, f) in files.iter().enumerate() {
                    if !seen.insert(&f.path) {
                        return Err(MetainfoError::DuplicatePath(i));
                    }
                }
                (files, true)
            }
            (None, None) => return Err(MetainfoError::MissingField("length")),
        };
        let mut files = files;
        let total_length = assign_offsets(&mut files)?;
        check_piece_count(total_length, piece_length, pieces_raw.len() / 20)?;

        let pieces = pieces_raw
            .chunks_exact(20)
            .map(|c| {
                let mut h = [0u8; 20];
                h.copy_from_slice(c);
                h
            })
            .collect();
        let private = info.get(b"private").and_then(Value::as_int) == Some(1);

        Ok(Metainfo {
            announce,
            announce_list,
            info_hash: sha1(info_raw),
            name,
            piece_length,
            pieces,
            files,
            total_length,
            multi_file,
            private,
            info_dict: info_raw.to_vec(),
        })
    }

    /// Parses a raw info dictionary, as fetched by BEP 9 metadata exchange: the
    /// same checks as [`Metainfo::parse`], with no tracker.
    pub fn from_info_dict(info: &[u8]) -> Result<Metainfo, MetainfoError> {
        Metainfo::parse(&torrent_with_info(info, None))
    }

    /// A `.torrent` file for this torrent: its info dictionary, byte for byte
    /// (so the info-hash is the same), and `announce` if given.
    pub fn to_torrent_file(&self, announce: Option<&str>) -> Vec<u8> {
        torrent_with_info(&self.info_dict, announce)
    }

    /// Number of pieces.
    pub fn piece_count(&self) -> u32 {
        u32::try_from(self.pieces.len()).unwrap_or(u32::MAX)
    }

    /// Byte offset of piece `index` in the concatenated data, if it exists.
    pub fn piece_offset(&self, index: u32) -> Option<u64> {
        if index >= self.piece_count() {
            return None;
        }
        u64::from(index).checked_mul(u64::from(self.piece_length))
    }

    /// Length of piece `index` (the last one may be shorter), if it exists.
    pub fn piece_len(&self, index: u32) -> Option<u32> {
        let start = self.piece_offset(index)?;
        let rest = self.total_length.checked_sub(start)?;
        let len = rest.min(u64::from(self.piece_length));
        u32::try_from(len).ok()
    }

    /// Expected SHA-1 of piece `index`, if it exists.
    pub fn piece_hash(&self, index: u32) -> Option<&[u8; 20]> {
        self.pieces.get(usize::try_from(index).ok()?)
    }

    /// The file regions covered by piece `index`, in order. Zero-length files
    /// are skipped. Empty for an out-of-range index.
    pub fn file_spans(&self, index: u32) -> FileSpans<'_> {
        let (pos, remaining) = match (self.piece_offset(index), self.piece_len(index)) {
            (Some(p), Some(l)) => (p, l),
            _ => (0, 0),
        };
        let next_file = self
            .files
            .partition_point(|f| f.offset.saturating_add(f.length) <= pos);
        FileSpans {
            files: &self.files,
            next_file,
            pos,
            remaining,
        }
    }

    /// Relative on-disk path of file `index`: `name` for a single-file
    /// torrent, `name/<path...>` for a multi-file one.
    pub fn relative_path(&self, index: usize) -> Option<PathBuf> {
        let f = self.files.get(index)?;
        let mut p = PathBuf::from(&self.name);
        p.extend(&f.path);
        Some(p)
    }
}

fn assign_offsets(files: &mut [FileEntry]) -> Result<u64, MetainfoError> {
    let mut total: u64 = 0;
    for f in files.iter_mut() {
        f.offset = total;
        total = total
            .checked_add(f.length)
            .ok_or(MetainfoError::TotalTooLarge)?;
    }
    if total == 0 {
        return Err(MetainfoError::Empty);
    }
    Ok(total)
}

fn check_piece_count(total: u64, piece_length: u32, actual: usize) -> Result<(), MetainfoError> {
    let expected = total.div_ceil(u64::from(piece_length));
    let actual = actual as u64;
    if expected != actual {
        return Err(MetainfoError::PieceCountMismatch { expected, actual });
    }
    Ok(())
}

/// Iterator returned by [`Metainfo::file_spans`].
#[derive(Debug, Clone)]
pub struct FileSpans<'a> {
    files: &'a [FileEntry],
    next_file: usize,
    pos: u64,
    remaining: u32,
}

impl Iterator for FileSpans<'_> {
    type Item = FileSpan;

    fn next(&mut self) -> Option<FileSpan> {
        while self.remaining > 0 {
            let file_index = self.next_file;
            let f = self.files.get(file_index)?;
            self.next_file += 1;
            let end = f.offset.saturating_add(f.length);
            if end <= self.pos {
                continue;
            }
            // A gap means the offsets were edited inconsistently; stop rather than guess.
            let offset = self.pos.checked_sub(f.offset)?;
            let take = (end - self.pos).min(u64::from(self.remaining));
            let len = u32::try_from(take).ok()?;
            self.pos += take;
            self.remaining -= len;
            return Some(FileSpan {
                file_index,
                offset,
                len,
            });
        }
        None
    }
}

/// Encodes a v1 `.torrent`. `files` are `(path components, length)` pairs in
/// data order; a single file with an empty path produces the single-file
/// layout named `name`, anything else the multi-file layout under directory
/// `name`. `piece_hashes` must come from hashing the concatenated file data
/// with `piece_length` (see [`PieceHasher`]). Inputs are validated with the
/// same rules as [`Metainfo::parse`], so the output always parses back.
pub fn build_torrent(
    name: &str,
    files: &[(Vec<String>, u64)],
    piece_length: u32,
    piece_hashes: &[[u8; 20]],
    announce: Option<&str>,
) -> Result<Vec<u8>, MetainfoError> {
    check_component(name, None)?;
    check_piece_length(i64::from(piece_length))?;
    if files.is_empty() {
        return Err(MetainfoError::NoFiles);
    }
    if files.len() > MAX_FILES {
        return Err(MetainfoError::TooManyFiles(files.len()));
    }
    let single = matches!(files, [(p, _)] if p.is_empty());
    let mut total: u64 = 0;
    let mut seen = HashSet::with_capacity(files.len());
    for (i, (path, length)) in files.iter().enumerate() {
        if !single {
            check_path(path, i)?;
            if !seen.insert(path) {
                return Err(MetainfoError::DuplicatePath(i));
            }
        }
        total = total
            .checked_add(*length)
            .ok_or(MetainfoError::TotalTooLarge)?;
    }
    if total == 0 {
        return Err(MetainfoError::Empty);
    }
    check_piece_count(total, piece_length, piece_hashes.len())?;
    let length_value = |n: u64| i64::try_from(n).map_err(|_| MetainfoError::TotalTooLarge);

    let mut info = OwnedValue::dict()
        .insert("name", name)
        .insert("piece length", i64::from(piece_length))
        .insert("pieces", piece_hashes.concat());
    if single {
        info = info.insert("length", length_value(total)?);
    } else {
        let mut list = Vec::with_capacity(files.len());
        for (path, length) in files {
            let comps: Vec<OwnedValue> = path.iter().map(|c| c.as_str().into()).collect();
            list.push(
                OwnedValue::dict()
                    .insert("length", length_value(*length)?)
                    .insert("path", comps),
            );
        }
        info = info.insert("files", list);
    }
    let mut root = OwnedValue::dict().insert("info", info);
    if let Some(a) = announce {
        root = root.insert("announce", a);
    }
    Ok(root.to_bytes())
}

/// Incremental piece hasher over the concatenated data of all files.
/// Feed bytes in order with [`PieceHasher::update`]; the split into calls
/// does not matter.
#[derive(Debug, Clone)]
pub struct PieceHasher {
    piece_length: u32,
    in_piece: u32,
    hasher: Sha1,
    hashes: Vec<[u8; 20]>,
}

impl PieceHasher {
    /// A hasher for pieces of `piece_length` bytes (1..=[`MAX_PIECE_LENGTH`]).
    pub fn new(piece_length: u32) -> Result<Self, MetainfoError> {
        check_piece_length(i64::from(piece_length))?;
        Ok(PieceHasher {
            piece_length,
            in_piece: 0,
            hasher: Sha1::new(),
            hashes: Vec::new(),
        })
    }

    /// Hashes the next bytes of data.
    pub fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (self.piece_length - self.in_piece) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.hasher.update(now);
            // now.len() <= room <= piece_length, which is a u32.
            self.in_piece += now.len() as u32;
            if self.in_piece == self.piece_length {
                self.hashes.push(self.hasher.finalize_reset().into());
                self.in_piece = 0;
            }
            data = rest;
        }
    }

    /// Finishes the last (possibly short) piece and returns all hashes.
    pub fn finish(mut self) -> Vec<[u8; 20]> {
        if self.in_piece > 0 {
            self.hashes.push(self.hasher.finalize().into());
        }
        self.hashes
    }
}

/// Hashes all data from `reader` into pieces of `piece_length` bytes.
pub fn hash_pieces_of_reader(reader: impl Read, piece_length: u32) -> io::Result<Vec<[u8; 20]>> {
    hash_pieces_of_readers(std::iter::once(reader), piece_length)
}

/// Hashes the concatenation of all `readers` (e.g. the torrent's files in
/// order) into pieces of `piece_length` bytes; pieces span file boundaries.
pub fn hash_pieces_of_readers<R: Read>(
    readers: impl IntoIterator<Item = R>,
    piece_length: u32,
) -> io::Result<Vec<[u8; 20]>> {
    let mut hasher = PieceHasher::new(piece_length)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; 64 * 1024];
    for mut r in readers {
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => hasher.update(buf.get(..n).unwrap_or(&[])),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    use reactor_test_support::fuzz::xorshift;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Builds the info dict by hand, wraps it in a torrent, returns (torrent, info bytes).
    fn handmade(info: &[u8], extra_root: &[u8]) -> Vec<u8> {
        let mut t = Vec::new();
        t.extend_from_slice(b"d");
        t.extend_from_slice(extra_root);
        t.extend_from_slice(b"4:info");
        t.extend_from_slice(info);
        t.extend_from_slice(b"e");
        t
    }

    fn single_info(len: i64, plen: i64, npieces: usize) -> Vec<u8> {
        let mut i =
            format!("d6:lengthi{len}e4:name5:a.txt12:piece lengthi{plen}e6:pieces").into_bytes();
        i.extend_from_slice(format!("{}:", npieces * 20).as_bytes());
        i.extend(std::iter::repeat_n(0xAB, npieces * 20));
        i.push(b'e');
        i
    }

    #[test]
    fn known_info_hash_vector() {
        let info = single_info(10, 4, 3);
        let torrent = handmade(&info, b"8:announce21:http://t.example/anno");
        let m = Metainfo::parse(&torrent).unwrap();
        let expected: [u8; 20] = Sha1::digest(&info).into();
        assert_eq!(m.info_hash, expected);
        // Fixed vector: SHA-1("abc").
        assert_eq!(
            sha1(b"abc"),
            [
                0xa9, 0x99, 0x3e, 0x36, 0x47, 0x06, 0x81, 0x6a, 0xba, 0x3e, 0x25, 0x71, 0x78, 0x50,
                0xc2, 0x6c, 0x9c, 0xd0, 0xd8, 0x9d
            ]
        );
        assert_eq!(m.announce.as_deref(), Some("http://t.example/anno"));
        assert_eq!(m.name, "a.txt");
        assert_eq!(m.total_length, 10);
        assert_eq!(m.piece_count(), 3);
        assert!(!m.multi_file);
        assert_eq!(m.files[0].path, Vec::<String>::new());
        assert_eq!(m.relative_path(0), Some(PathBuf::from("a.txt")));
    }

    #[test]
    fn info_hash_uses_raw_bytes_of_noncanonical_info() {
        // Unsorted keys inside info: re-encoding would sort them and change the hash.
        let info = b"d4:name1:x12:piece lengthi4e6:lengthi4e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let torrent = handmade(info, b"");
        let m = Metainfo::parse(&torrent).unwrap();
        assert_eq!(m.info_hash, sha1(info));
        let reencoded = bencode::decode(info).unwrap().to_owned_value().to_bytes();
        assert_ne!(sha1(&reencoded), m.info_hash);
    }

    #[test]
    fn build_and_parse_multi_file() {
        let files = vec![
            (s(&["dir", "a.bin"]), 5u64),
            (s(&["empty"]), 0),
            (s(&["b.bin"]), 20),
            (s(&["dir", "c.bin"]), 3),
        ];
        let content: Vec<u8> = data(28, 7);
        let plen = 8;
        let readers: Vec<&[u8]> = vec![&content[..5], &[], &content[5..25], &content[25..]];
        let hashes = hash_pieces_of_readers(readers, plen).unwrap();
        assert_eq!(hashes, hash_pieces_of_reader(&content[..], plen).unwrap());
        assert_eq!(hashes.len(), 4);
        assert_eq!(hashes[3], sha1(&content[24..]));
        let bytes = build_torrent("top", &files, plen, &hashes, Some("http://x/a")).unwrap();
        let m = Metainfo::parse(&bytes).unwrap();
        assert_eq!(m.name, "top");
        assert!(m.multi_file);
        assert_eq!(m.piece_length, plen);
        assert_eq!(m.pieces, hashes);
        assert_eq!(m.total_length, 28);
        assert_eq!(m.announce.as_deref(), Some("http://x/a"));
        let got: Vec<_> = m.files.iter().map(|f| (f.path.clone(), f.length)).collect();
        assert_eq!(got, files);
        assert_eq!(
            m.files.iter().map(|f| f.offset).collect::<Vec<_>>(),
            vec![0, 5, 5, 25]
        );
        let raw = bencode::find_raw(&bytes, b"info").unwrap().unwrap();
        assert_eq!(m.info_hash, sha1(raw));
        // canonical output
        let strict = DecodeOptions {
            require_sorted_keys: true,
            ..DecodeOptions::default()
        };
        assert!(bencode::decode_with(&bytes, &strict).is_ok());

        assert_eq!(m.piece_len(0), Some(8));
        assert_eq!(m.piece_len(3), Some(4));
        assert_eq!(m.piece_len(4), None);
        assert_eq!(m.piece_offset(3), Some(24));
        assert_eq!(m.piece_hash(3), Some(&hashes[3]));
        assert_eq!(m.piece_hash(4), None);
        let spans = |i| m.file_spans(i).collect::<Vec<_>>();
        let sp = |file_index, offset, len| FileSpan {
            file_index,
            offset,
            len,
        };
        assert_eq!(spans(0), vec![sp(0, 0, 5), sp(2, 0, 3)]);
        assert_eq!(spans(1), vec![sp(2, 3, 8)]);
        assert_eq!(spans(2), vec![sp(2, 11, 8)]);
        assert_eq!(spans(3), vec![sp(2, 19, 1), sp(3, 0, 3)]);
        assert_eq!(spans(4), vec![]);
        // Every byte is covered exactly once.
        let mut covered = 0u64;
        for i in 0..m.piece_count() {
            let sum: u64 = m.file_spans(i).map(|s| u64::from(s.len)).sum();
            assert_eq!(Some(sum as u32), m.piece_len(i));
            covered += sum;
        }
        assert_eq!(covered, m.total_length);
        assert_eq!(
            m.relative_path(3),
            Some(["top", "dir", "c.bin"].iter().collect::<PathBuf>())
        );
        assert_eq!(m.relative_path(4), None);
    }

    #[test]
    fn build_and_parse_single_file() {
        let content = data(100, 1);
        let hashes = hash_pieces_of_reader(&content[..], 32).unwrap();
        let bytes = build_torrent("f.iso", &[(vec![], 100)], 32, &hashes, None).unwrap();
        let m = Metainfo::parse(&bytes).unwrap();
        assert!(!m.multi_file);
        assert_eq!(m.announce, None);
        assert_eq!(m.files.len(), 1);
        assert_eq!(m.piece_count(), 4);
        assert_eq!(m.piece_len(3), Some(4));
        assert_eq!(
            m.file_spans(3).collect::<Vec<_>>(),
            vec![FileSpan {
                file_index: 0,
                offset: 96,
                len: 4
            }]
        );
        assert_eq!(
            m.info_hash,
            sha1(bencode::find_raw(&bytes, b"info").unwrap().unwrap())
        );
    }

    #[test]
    fn piece_hasher_split_independent() {
        let content = data(1000, 3);
        let whole = hash_pieces_of_reader(&content[..], 64).unwrap();
        let mut h = PieceHasher::new(64).unwrap();
        for c in content.chunks(7) {
            h.update(c);
        }
        assert_eq!(h.finish(), whole);
        assert_eq!(whole.len(), 16);
        assert_eq!(whole[0], sha1(&content[..64]));
        assert!(PieceHasher::new(0).is_err());
        assert!(PieceHasher::new(MAX_PIECE_LENGTH + 1).is_err());
        let e = hash_pieces_of_reader(&content[..], 0).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(
            hash_pieces_of_reader(&b""[..], 4).unwrap(),
            Vec::<[u8; 20]>::new()
        );
    }

    #[test]
    fn reader_errors_propagate_and_interrupts_retry() {
        struct Flaky(u8);
        impl Read for Flaky {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.0 += 1;
                match self.0 {
                    1 => Err(io::Error::from(io::ErrorKind::Interrupted)),
                    2 => {
                        buf[0] = 1;
                        Ok(1)
                    }
                    _ => Err(io::Error::other("disk on fire")),
                }
            }
        }
        let e = hash_pieces_of_reader(Flaky(0), 4).unwrap_err();
        assert_eq!(e.to_string(), "disk on fire");
    }

    #[test]
    fn hybrid_and_v2() {
        let v2 = handmade(
            b"d9:file treede12:meta versioni2e4:name1:x12:piece lengthi16384ee",
            b"",
        );
        assert_eq!(Metainfo::parse(&v2), Err(MetainfoError::V2Only));
        let v2b = handmade(b"d9:file treede4:name1:x12:piece lengthi16384ee", b"");
        assert_eq!(Metainfo::parse(&v2b), Err(MetainfoError::V2Only));
        let hybrid = handmade(
            b"d9:file treede6:lengthi4e12:meta versioni2e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaae",
            b"",
        );
        let m = Metainfo::parse(&hybrid).unwrap();
        assert_eq!(m.total_length, 4);
        assert_eq!(
            m.info_hash,
            sha1(bencode::find_raw(&hybrid, b"info").unwrap().unwrap())
        );
    }

    #[test]
    fn extras_private_announce_list_utf8_fallback() {
        let info = b"d6:lengthi1e4:name2:\xff\xfe10:name.utf-81:n12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaa7:privatei1ee";
        let t = handmade(info, b"13:announce-listll3:u:13:u:2el3:u:3ei5elel1:\xffee");
        let m = Metainfo::parse(&t).unwrap();
        assert_eq!(m.name, "n");
        assert!(m.private);
        assert_eq!(m.announce_list, vec![s(&["u:1", "u:2"]), s(&["u:3"])]);
        let bad = b"d6:lengthi1e4:name2:\xff\xfe12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        assert_eq!(
            Metainfo::parse(&handmade(bad, b"")),
            Err(MetainfoError::NotUtf8("name"))
        );
        // path.utf-8 fallback
        let info = b"d5:filesld6:lengthi1e4:pathl1:\xffe10:path.utf-8l1:peee4:name1:d12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        let m = Metainfo::parse(&handmade(info, b"")).unwrap();
        assert_eq!(m.files[0].path, s(&["p"]));
        let info = b"d5:filesld6:lengthi1e4:pathl1:\xffeee4:name1:d12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaae";
        assert_eq!(
            Metainfo::parse(&handmade(info, b"")),
            Err(MetainfoError::NotUtf8("path"))
        );
    }

    fn multi(files: &str) -> Vec<u8> {
        let info =
            format!("d5:files{files}4:name1:d12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaae");
        handmade(info.as_bytes(), b"")
    }

    #[test]
    fn hostile_paths() {
        let bad = |p: &str| {
            let t = multi(&format!("ld6:lengthi1e4:path{p}ee"));
            Metainfo::parse(&t)
        };
        assert!(bad("l1:ae").is_ok());
        for p in [
            "le",
            "l0:e",
            "l2:..e",
            "l1:.e",
            "l1:a2:..e",
            "l3:a/be",
            "l4:/etce",
            "l3:a\\be",
            "l3:a\0be",
        ] {
            assert!(
                matches!(bad(p), Err(MetainfoError::BadPath { file: Some(0), .. })),
                "{p:?}"
            );
        }
        let long = format!("l256:{}e", "x".repeat(256));
        assert!(matches!(bad(&long), Err(MetainfoError::BadPath { .. })));
        let deep = format!("l{}e", "1:a".repeat(MAX_PATH_DEPTH + 1));
        assert!(matches!(bad(&deep), Err(MetainfoError::BadPath { .. })));
        assert_eq!(bad("i1e"), Err(MetainfoError::WrongType("path")));
        assert_eq!(bad("li1ee"), Err(MetainfoError::WrongType("path")));
        let dup = multi("ld6:lengthi1e4:pathl1:aeed6:lengthi0e4:pathl1:aeee");
        assert_eq!(Metainfo::parse(&dup), Err(MetainfoError::DuplicatePath(1)));
        for name in ["0:", "2:..", "3:a/b", "1:."] {
            let info = format!(
                "d6:lengthi1e4:name{name}12:piece lengthi1e6:pieces20:aaaaaaaaaaaaaaaaaaaae"
            );
            assert!(matches!(
                Metainfo::parse(&handmade(info.as_bytes(), b"")),
                Err(MetainfoError::BadPath { file: None, .. })
            ));
        }
    }

    #[test]
    fn structural_errors() {
        let p = |b: &[u8]| Metainfo::parse(b);
        assert!(matches!(p(b"d"), Err(MetainfoError::Bencode(_))));
        assert_eq!(p(b"le"), Err(MetainfoError::NotADict));
        assert_eq!(p(b"de"), Err(MetainfoError::MissingField("info")));
        assert_eq!(p(b"d4:infoi1ee"), Err(MetainfoError::NotADict));
        assert_eq!(
            p(&vec![b' '; MAX_TORRENT_SIZE + 1]),
            Err(MetainfoError::TooLarge {
                len: MAX_TORRENT_SIZE + 1
            })
        );
        let good = single_info(10, 4, 3);
        assert!(p(&handmade(&good, b"")).is_ok());
        assert_eq!(
            p(&handmade(&good, b"8:announcei1e")),
            Err(MetainfoError::WrongType("announce"))
        );
        assert_eq!(
            p(&handmade(&good, b"8:announce1:\xff")),
            Err(MetainfoError::NotUtf8("announce"))
        );
        let i = |s: &str| p(&handmade(s.as_bytes(), b""));
        let pieces20 = "6:pieces20:aaaaaaaaaaaaaaaaaaaa";
        assert_eq!(
            i("d6:lengthi1e4:name1:x12:piece lengthi1ee"),
            Err(MetainfoError::MissingField("pieces"))
        );
        assert_eq!(
            i("d6:lengthi1e4:name1:x12:piece lengthi1e6:piecesi1ee"),
            Err(MetainfoError::WrongType("pieces"))
        );
        assert_eq!(
            i("d6:lengthi1e4:name1:x12:piece lengthi1e6:pieces3:abce"),
            Err(MetainfoError::BadPiecesLength(3))
        );
        assert_eq!(
            i(&format!("d6:lengthi1e4:name1:x{pieces20}e")),
            Err(MetainfoError::MissingField("piece length"))
        );
        assert_eq!(
            i(&format!(
                "d6:lengthi1e4:name1:x12:piece length1:a{pieces20}e"
            )),
            Err(MetainfoError::WrongType("piece length"))
        );
        for bad in ["0", "-1", "67108865", "99999999999"] {
            assert!(matches!(
                i(&format!(
                    "d6:lengthi1e4:name1:x12:piece lengthi{bad}e{pieces20}e"
                )),
                Err(MetainfoError::BadPieceLength(_))
            ));
        }
        assert!(
            i(&format!(
                "d6:lengthi1e4:name1:x12:piece lengthi67108864e{pieces20}e"
            ))
            .is_ok()
        );
        assert_eq!(
            i(&format!("d6:lengthi1e12:piece lengthi1e{pieces20}e")),
            Err(MetainfoError::MissingField("name"))
        );
        assert_eq!(
            i(&format!(
                "d6:lengthi1e4:namei1e12:piece lengthi1e{pieces20}e"
            )),
            Err(MetainfoError::WrongType("name"))
        );
        assert_eq!(
            i(&format!("d4:name1:x12:piece lengthi1e{pieces20}e")),
            Err(MetainfoError::MissingField("length"))
        );
        assert_eq!(
            i(&format!(
                "d6:lengthi-1e4:name1:x12:piece lengthi1e{pieces20}e"
            )),
            Err(MetainfoError::BadFileLength(-1))
        );
        assert_eq!(
            i(&format!(
                "d6:length1:a4:name1:x12:piece lengthi1e{pieces20}e"
            )),
            Err(MetainfoError::WrongType("length"))
        );
        assert_eq!(
            i("d6:lengthi0e4:name1:x12:piece lengthi1e6:pieces0:e"),
            Err(MetainfoError::Empty)
        );
        assert_eq!(
            i(&format!(
                "d5:filesle6:lengthi1e4:name1:x12:piece lengthi1e{pieces20}e"
            )),
            Err(MetainfoError::AmbiguousLayout)
        );
        assert_eq!(p(&multi("le")), Err(MetainfoError::NoFiles));
        assert_eq!(p(&multi("i1e")), Err(MetainfoError::WrongType("files")));
        assert_eq!(p(&multi("li1ee")), Err(MetainfoError::WrongType("files")));
        assert_eq!(
            p(&multi("ld4:pathl1:aeee")),
            Err(MetainfoError::MissingField("length"))
        );
        assert_eq!(
            p(&multi("ld6:lengthi1eee")),
            Err(MetainfoError::MissingField("path"))
        );
        assert_eq!(
            p(&multi(
                "ld6:lengthi9223372036854775807e4:pathl1:aeed6:lengthi9223372036854775807e4:pathl1:beed6:lengthi9223372036854775807e4:pathl1:ceee"
            )),
            Err(MetainfoError::TotalTooLarge)
        );
        assert_eq!(
            i(&format!(
                "d6:lengthi2e4:name1:x12:piece lengthi1e{pieces20}e"
            )),
            Err(MetainfoError::PieceCountMismatch {
                expected: 2,
                actual: 1
            })
        );
        // Huge declared size with few hashes.
        assert_eq!(
            i(&format!(
                "d6:lengthi9223372036854775807e4:name1:x12:piece lengthi67108864e{pieces20}e"
            )),
            Err(MetainfoError::PieceCountMismatch {
                expected: 137438953472,
                actual: 1
            })
        );
    }

    #[test]
    fn build_errors() {
        let h = [[0u8; 20]];
        let one = [(s(&["a"]), 1u64)];
        assert!(build_torrent("x", &one, 1, &h, None).is_ok());
        assert!(matches!(
            build_torrent("..", &one, 1, &h, None),
            Err(MetainfoError::BadPath { file: None, .. })
        ));
        assert!(matches!(
            build_torrent("x", &one, 0, &h, None),
            Err(MetainfoError::BadPieceLength(0))
        ));
        assert_eq!(
            build_torrent("x", &[], 1, &h, None),
            Err(MetainfoError::NoFiles)
        );
        assert!(matches!(
            build_torrent("x", &[(s(&["a", ".."]), 1)], 1, &h, None),
            Err(MetainfoError::BadPath { file: Some(0), .. })
        ));
        assert!(matches!(
            build_torrent("x", &[(s(&["a"]), 1), (vec![], 0)], 1, &h, None),
            Err(MetainfoError::BadPath { file: Some(1), .. })
        ));
        assert_eq!(
            build_torrent("x", &[(s(&["a"]), 1), (s(&["a"]), 0)], 1, &h, None),
            Err(MetainfoError::DuplicatePath(1))
        );
        assert_eq!(
            build_torrent("x", &[(s(&["a"]), u64::MAX), (s(&["b"]), 1)], 1, &h, None),
            Err(MetainfoError::TotalTooLarge)
        );
        assert_eq!(
            build_torrent("x", &[(vec![], u64::MAX)], MAX_PIECE_LENGTH, &[], None),
            Err(MetainfoError::PieceCountMismatch {
                expected: u64::MAX.div_ceil(u64::from(MAX_PIECE_LENGTH)),
                actual: 0
            })
        );
        assert_eq!(
            build_torrent("x", &[(vec![], 0)], 1, &[], None),
            Err(MetainfoError::Empty)
        );
        assert_eq!(
            build_torrent("x", &[(vec![], 2)], 1, &h, None),
            Err(MetainfoError::PieceCountMismatch {
                expected: 2,
                actual: 1
            })
        );
    }

    #[test]
    fn helpers_tolerate_inconsistent_fields() {
        let content = data(10, 0);
        let hashes = hash_pieces_of_reader(&content[..], 4).unwrap();
        let bytes = build_torrent("x", &[(vec![], 10)], 4, &hashes, None).unwrap();
        let mut m = Metainfo::parse(&bytes).unwrap();
        m.total_length = 3; // edited by a caller
        assert_eq!(m.piece_len(1), None);
        assert_eq!(m.file_spans(1).count(), 0);
        m.files[0].offset = 100; // gap
        m.total_length = 10;
        assert_eq!(m.file_spans(0).count(), 0);
        m.files.clear();
        assert_eq!(m.file_spans(0).count(), 0);
        assert_eq!(m.relative_path(0), None);
    }

    #[test]
    fn error_display() {
        let errs = [
            MetainfoError::TooLarge { len: 1 },
            MetainfoError::Bencode(BencodeError::UnexpectedEof),
            MetainfoError::NotADict,
            MetainfoError::MissingField("x"),
            MetainfoError::WrongType("x"),
            MetainfoError::NotUtf8("x"),
            MetainfoError::V2Only,
            MetainfoError::BadPieceLength(0),
            MetainfoError::BadPiecesLength(3),
            MetainfoError::PieceCountMismatch {
                expected: 1,
                actual: 2,
            },
            MetainfoError::BadFileLength(-1),
            MetainfoError::TotalTooLarge,
            MetainfoError::AmbiguousLayout,
            MetainfoError::NoFiles,
            MetainfoError::TooManyFiles(9),
            MetainfoError::Empty,
            MetainfoError::BadPath {
                file: Some(1),
                reason: "r",
            },
            MetainfoError::BadPath {
                file: None,
                reason: "r",
            },
            MetainfoError::DuplicatePath(1),
        ];
        for e in &errs {
            assert!(!e.to_string().is_empty());
        }
        use std::error::Error;
        assert!(errs[1].source().is_some());
        assert!(errs[0].source().is_none());
    }

    #[test]
    fn never_panics() {
        let content = data(50, 9);
        let hashes = hash_pieces_of_reader(&content[..], 16).unwrap();
        let seeds = [
            build_torrent(
                "t",
                &[(s(&["a"]), 20), (s(&["b", "c"]), 30)],
                16,
                &hashes,
                Some("http://a/b"),
            )
            .unwrap(),
            build_torrent("t", &[(vec![], 50)], 16, &hashes, None).unwrap(),
        ];
        let alphabet = b"ilde0123456789:-./";
        let mut st = 0x1234_5678_9ABC_DEF1u64;
        for i in 0..20_000 {
            let seed = &seeds[i % seeds.len()];
            let mut b = seed.clone();
            let flips = xorshift(&mut st) % 3;
            for _ in 0..flips {
                let at = (xorshift(&mut st) as usize) % b.len();
                b[at] = if xorshift(&mut st).is_multiple_of(2) {
                    alphabet[(xorshift(&mut st) as usize) % alphabet.len()]
                } else {
                    xorshift(&mut st) as u8
                };
            }
            if i % 4 == 0 {
                b.truncate((xorshift(&mut st) as usize) % (b.len() + 1));
            }
            if let Ok(m) = Metainfo::parse(&b) {
                let mut total = 0u64;
                for p in 0..m.piece_count().saturating_add(1) {
                    total += m.file_spans(p).map(|s| u64::from(s.len)).sum::<u64>();
                }
                assert_eq!(total, m.total_length);
                for f in 0..m.files.len() {
                    let _ = m.relative_path(f);
                }
            }
        }
    }

    #[test]
    fn info_dict_round_trips_to_the_same_info_hash() {
        let t = build_torrent(
            "x",
            &[(vec![], 40_000)],
            16384,
            &[[1u8; 20]; 3],
            Some("http://t/a"),
        )
        .unwrap();
        let m = Metainfo::parse(&t).unwrap();
        assert_eq!(sha1(&m.info_dict), m.info_hash);
        let back = Metainfo::from_info_dict(&m.info_dict).unwrap();
        assert_eq!(back.info_hash, m.info_hash);
        assert_eq!(back.announce, None);
        let file = m.to_torrent_file(Some("http://127.0.0.1:1/announce"));
        let again = Metainfo::parse(&file).unwrap();
        assert_eq!(again.info_hash, m.info_hash);
        assert_eq!(
            again.announce.as_deref(),
            Some("http://127.0.0.1:1/announce")
        );
        assert!(Metainfo::from_info_dict(b"d4:name1:xe").is_err());
        assert!(Metainfo::from_info_dict(b"garbage").is_err());
    }
}
