//! Blocking file storage for one torrent: positional reads and writes of piece data
//! across the torrent's files, piece verification, and torrent creation helpers.
//!
//! Everything here blocks (file I/O and SHA-1), so it must only run on the worker
//! pool ([`reactor::Context::offload`]), never on the loop thread. [`Storage`] is
//! `Send + Sync` and uses positional I/O (`pread`/`pwrite`), so several jobs can
//! share it through an `Arc` without a lock. It must not know about peers or the
//! wire protocol.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::metainfo::{Metainfo, PieceHasher, sha1};

/// The torrent's files opened for positional I/O, in torrent order.
#[derive(Debug)]
pub struct Storage {
    files: Vec<File>,
    meta: std::sync::Arc<Metainfo>,
}

/// How [`Storage::open`] treats the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// Existing data to serve: files must exist with the torrent's sizes.
    Seed,
    /// Download target: files are created (with parent folders) and sized.
    Download,
}

/// Where file `i` of `meta` lives: `root` itself for a single-file torrent; for a
/// multi-file torrent `root` is the torrent's folder (its `name`), so the file is
/// `root/<path...>`. Path components were checked by [`Metainfo::parse`] (no `..`).
pub fn file_path(meta: &Metainfo, root: &Path, i: usize) -> Option<PathBuf> {
    if meta.multi_file {
        let f = meta.files.get(i)?;
        let mut p = root.to_path_buf();
        p.extend(&f.path);
        Some(p)
    } else {
        Some(root.to_path_buf())
    }
}

impl Storage {
    /// Opens (and for [`OpenMode::Download`] creates and sizes) the torrent's files
    /// under `root`: the file itself for a single-file torrent, a folder otherwise.
    pub fn open(
        meta: std::sync::Arc<Metainfo>,
        root: &Path,
        mode: OpenMode,
    ) -> io::Result<Storage> {
        let mut files = Vec::with_capacity(meta.files.len());
        for (i, entry) in meta.files.iter().enumerate() {
            let path = file_path(&meta, root, i).ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidData, "unsafe path in torrent")
            })?;
            let f = match mode {
                OpenMode::Seed => {
                    let f = File::open(&path).map_err(|e| with_path(e, &path))?;
                    let len = f.metadata()?.len();
                    if len != entry.length {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!(
                                "{} is {len} bytes, the torrent says {}",
                                path.display(),
                                entry.length
                            ),
                        ));
                    }
                    f
                }
                OpenMode::Download => {
                    if let Some(parent) = path.parent()
                        && !parent.as_os_str().is_empty()
                    {
                        std::fs::create_dir_all(parent).map_err(|e| with_path(e, parent))?;
                    }
                    let f = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&path)
                        .map_err(|e| with_path(e, &path))?;
                    if f.metadata()?.len() != entry.length {
                        f.set_len(entry.length)?;
                    }
                    f
                }
            };
            files.push(f);
        }
        Ok(Storage { files, meta })
    }

    /// The torrent this storage holds.
    pub fn meta(&self) -> &Metainfo {
        &self.meta
    }

    /// Reads `len` bytes at `begin` within `piece` into a new buffer.
    pub fn read(&self, piece: u32, begin: u32, len: u32) -> io::Result<Vec<u8>> {
        let mut buf = vec![0u8; len as usize];
        self.read_into(piece, begin, &mut buf)?;
        Ok(buf)
    }

    /// Fills `buf` from `begin` within `piece` (spanning files as needed).
    pub fn read_into(&self, piece: u32, begin: u32, buf: &mut [u8]) -> io::Result<()> {
        let start = self.abs(piece, begin, buf.len())?;
        let mut done = 0usize;
        // Walk files by absolute offset: exact for any range, even across files.
        let mut pos = start;
        while done < buf.len() {
            let (fi, off, avail) = self.locate(pos)?;
            let n = avail.min((buf.len() - done) as u64) as usize;
            self.files[fi].read_exact_at(&mut buf[done..done + n], off)?;
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes `data` at `begin` within `piece` (spanning files as needed).
    pub fn write(&self, piece: u32, begin: u32, data: &[u8]) -> io::Result<()> {
        let mut pos = self.abs(piece, begin, data.len())?;
        let mut done = 0usize;
        while done < data.len() {
            let (fi, off, avail) = self.locate(pos)?;
            let n = avail.min((data.len() - done) as u64) as usize;
            self.files[fi].write_all_at(&data[done..done + n], off)?;
            done += n;
            pos += n as u64;
        }
        Ok(())
    }

    /// Flushes written data to disk.
    pub fn sync(&self) -> io::Result<()> {
        for f in &self.files {
            f.sync_data()?;
        }
        Ok(())
    }

    /// Hashes pieces `range` and returns those whose SHA-1 matches the torrent.
    pub fn verify(&self, range: std::ops::Range<u32>) -> io::Result<Vec<u32>> {
        let mut good = Vec::new();
        let mut buf = vec![0u8; self.meta.piece_length as usize];
        for piece in range {
            let Some(len) = self.meta.piece_len(piece) else {
                break;
            };
            let b = &mut buf[..len as usize];
            self.read_into(piece, 0, b)?;
            if Some(&sha1(b)) == self.meta.piece_hash(piece) {
                good.push(piece);
            }
        }
        Ok(good)
    }

    fn abs(&self, piece: u32, begin: u32, len: usize) -> io::Result<u64> {
        let plen = self.meta.piece_len(piece).unwrap_or(0);
        if u64::from(begin) + len as u64 > u64::from(plen) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "range outside the piece",
            ));
        }
        Ok(self.meta.piece_offset(piece).unwrap_or(0) + u64::from(begin))
    }

    /// File index, offset in it, and bytes left in it for absolute offset `pos`.
    fn locate(&self, pos: u64) -> io::Result<(usize, u64, u64)> {
        // Files are few for almost every torrent; a binary search keeps huge ones fast.
        let files = &self.meta.files;
        let i = files.partition_point(|f| f.offset + f.length <= pos);
        match files.get(i) {
            Some(f) if f.offset <= pos => Ok((i, pos - f.offset, f.offset + f.length - pos)),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "offset beyond the torrent's data",
            )),
        }
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The files to put in a new torrent made from `data`: the file itself (empty
/// path), or every regular file under the folder, sorted, with its path components.
pub fn collect_files(data: &Path) -> io::Result<Vec<(Vec<String>, u64, PathBuf)>> {
    let md = std::fs::metadata(data).map_err(|e| with_path(e, data))?;
    if md.is_file() {
        return Ok(vec![(Vec::new(), md.len(), data.to_path_buf())]);
    }
    let mut out = Vec::new();
    walk(data, &mut Vec::new(), &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} contains no files", data.display()),
        ));
    }
    Ok(out)
}

fn walk(
    dir: &Path,
    prefix: &mut Vec<String>,
    out: &mut Vec<(Vec<String>, u64, PathBuf)>,
) -> io::Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| with_path(e, dir))? {
        let entry = entry?;
        let name = entry.file_name().into_string().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("non-UTF-8 file name under {}", dir.display()),
            )
        })?;
        let ty = entry.file_type()?;
        prefix.push(name);
        if ty.is_dir() {
            walk(&entry.path(), prefix, out)?;
        } else if ty.is_file() {
            out.push((prefix.clone(), entry.metadata()?.len(), entry.path()));
        }
        prefix.pop();
    }
    Ok(())
}

/// Hashes the byte range `[start, start + len)` of the concatenation of `paths`
/// (with their `lengths`) into pieces of `piece_length`; `start` must be a piece
/// boundary. Blocking: run it on the pool, one job per slice of the data.
pub fn hash_range(
    paths: &[(PathBuf, u64)],
    start: u64,
    len: u64,
    piece_length: u32,
) -> io::Result<Vec<[u8; 20]>> {
    let mut hasher = PieceHasher::new(piece_length)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut file_start = 0u64;
    let end = start + len;
    for (path, flen) in paths {
        let file_end = file_start + flen;
        if file_end > start && file_start < end {
            let f = File::open(path).map_err(|e| with_path(e, path))?;
            let mut pos = start.max(file_start);
            let stop = end.min(file_end);
            while pos < stop {
                let n = ((stop - pos) as usize).min(buf.len());
                f.read_exact_at(&mut buf[..n], pos - file_start)
                    .map_err(|e| with_path(e, path))?;
                hasher.update(&buf[..n]);
                pos += n as u64;
            }
        }
        file_start = file_end;
    }
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metainfo::build_torrent;
    use std::sync::Arc;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("reactor-storage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn multi_file_roundtrip_and_verify() {
        let d = tmp("multi");
        let src = d.join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        let a: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
        let b: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(src.join("a.bin"), &a).unwrap();
        std::fs::write(src.join("sub").join("b.bin"), &b).unwrap();
        let files = collect_files(&src).unwrap();
        assert_eq!(files.len(), 2);
        let paths: Vec<(PathBuf, u64)> = files.iter().map(|f| (f.2.clone(), f.1)).collect();
        // Hash in two slices, as the pool does, and compare with one pass.
        let h1 = hash_range(&paths, 0, 1024, 512).unwrap();
        let h2 = hash_range(&paths, 1024, 4000 - 1024, 512).unwrap();
        let all = hash_range(&paths, 0, 4000, 512).unwrap();
        assert_eq!([h1, h2].concat(), all);
        let list: Vec<(Vec<String>, u64)> = files.iter().map(|f| (f.0.clone(), f.1)).collect();
        let t = build_torrent("src", &list, 512, &all, None).unwrap();
        let meta = Arc::new(Metainfo::parse(&t).unwrap());
        let seed = Storage::open(meta.clone(), &src, OpenMode::Seed).unwrap();
        assert_eq!(seed.verify(0..meta.piece_count()).unwrap().len(), 8);
        // A piece straddling both files reads back exactly.
        let p1 = seed.read(1, 0, 512).unwrap();
        let whole = [a.clone(), b.clone()].concat();
        assert_eq!(p1, whole[512..1024]);
        let p2 = seed.read(1, 400, 112).unwrap();
        assert_eq!(p2, whole[912..1024]);
        // Download copies piece by piece into a fresh folder.
        let out = d.join("out");
        let dl = Storage::open(meta.clone(), &out, OpenMode::Download).unwrap();
        assert!(dl.verify(0..meta.piece_count()).unwrap().is_empty());
        for p in 0..meta.piece_count() {
            let data = seed.read(p, 0, meta.piece_len(p).unwrap()).unwrap();
            dl.write(p, 0, &data).unwrap();
        }
        assert_eq!(std::fs::read(out.join("a.bin")).unwrap(), a);
        assert_eq!(std::fs::read(out.join("sub").join("b.bin")).unwrap(), b);
        assert!(seed.read(7, 0, 513).is_err(), "beyond the last piece");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn seed_rejects_wrong_size() {
        let d = tmp("size");
        let f = d.join("x");
        std::fs::write(&f, [1u8; 100]).unwrap();
        let h = hash_range(&[(f.clone(), 100)], 0, 100, 64).unwrap();
        let t = build_torrent("x", &[(vec![], 100)], 64, &h, None).unwrap();
        let meta = Arc::new(Metainfo::parse(&t).unwrap());
        std::fs::write(&f, [1u8; 99]).unwrap();
        let e = Storage::open(meta, &f, OpenMode::Seed).unwrap_err();
        assert!(e.to_string().contains("99 bytes"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
