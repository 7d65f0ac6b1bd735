//! Making a `.torrent` on the reactor: a handler that lists the data, hashes it in
//! parallel slices on the worker pool, encodes the torrent and writes it, then stops
//! the loop.
//!
//! The loop itself never reads a file or hashes (the design's first lesson, kept
//! even in a one-shot CLI so the same code can run inside a server). It must not
//! decide the torrent format: that is [`super::metainfo::build_torrent`].

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;

use super::metainfo::build_torrent;
use super::storage::{collect_files, hash_range};
use reactor::{Context, Loop};
use reactor::{Handler, HandlerResult};
use reactor::{JobId, JobResult};

/// What to make.
#[derive(Clone, Debug)]
pub struct MakeTorrent {
    /// The file, or the folder for a multi-file torrent (its name is the torrent's).
    pub data: PathBuf,
    /// Piece length in bytes.
    pub piece_length: u32,
    /// Where to write the `.torrent`.
    pub out: PathBuf,
    /// Tracker announce URL.
    pub tracker: Option<String>,
}

/// Where the handler leaves `Ok(piece count)` or an error message.
pub type MakeResult = Rc<RefCell<Option<Result<u32, String>>>>;

type Files = Vec<(Vec<String>, u64, PathBuf)>;

/// A finished step of making a torrent (the handler's offloaded work); opaque.
pub struct MakeStep(Step);

enum Step {
    Listed(std::io::Result<Files>),
    Hashed(usize, std::io::Result<Vec<[u8; 20]>>),
    Written(std::io::Result<()>),
}

/// The handler that makes a torrent; its result is in the `Rc` given to [`MakeTorrent::handler`].
pub struct MakeTorrentHandler {
    spec: MakeTorrent,
    result: MakeResult,
    files: Files,
    parts: Vec<Option<Vec<[u8; 20]>>>,
    pending: usize,
}

impl MakeTorrent {
    /// The handler, and where it leaves `Ok(piece count)` or an error message once
    /// the loop stops.
    pub fn handler(self) -> (MakeTorrentHandler, MakeResult) {
        let result = Rc::new(RefCell::new(None));
        (
            MakeTorrentHandler {
                spec: self,
                result: result.clone(),
                files: Vec::new(),
                parts: Vec::new(),
                pending: 0,
            },
            result,
        )
    }
}

impl MakeTorrentHandler {
    fn fail(&mut self, cx: &mut Loop<'_>, msg: String) {
        *self.result.borrow_mut() = Some(Err(msg));
        cx.stop();
    }

    fn step(&mut self, cx: &mut Context<'_, Self>, step: Step) -> Result<(), String> {
        match step {
            Step::Listed(files) => {
                self.files = files.map_err(|e| format!("cannot read the data: {e}"))?;
                let total: u64 = self.files.iter().map(|f| f.1).sum();
                if total == 0 {
                    return Err("the data is empty".into());
                }
                let pl = u64::from(self.spec.piece_length);
                let pieces = total.div_ceil(pl);
                // Slices of whole pieces, a few per worker so they finish together.
                let slices = (cx.config().workers as u64 * 2).clamp(1, pieces);
                let per = pieces.div_ceil(slices);
                let paths: std::sync::Arc<Vec<(PathBuf, u64)>> =
                    std::sync::Arc::new(self.files.iter().map(|f| (f.2.clone(), f.1)).collect());
                let mut start_piece = 0u64;
                let mut i = 0usize;
                while start_piece < pieces {
                    let start = start_piece * pl;
                    let len = (per * pl).min(total - start);
                    let paths = paths.clone();
                    let piece_length = self.spec.piece_length;
                    cx.offload(move || {
                        MakeStep(Step::Hashed(
                            i,
                            hash_range(&paths, start, len, piece_length),
                        ))
                    })
                    .map_err(|e| e.to_string())?;
                    self.parts.push(None);
                    self.pending += 1;
                    start_piece += per;
                    i += 1;
                }
            }
            Step::Hashed(i, hashes) => {
                let h = hashes.map_err(|e| format!("cannot hash the data: {e}"))?;
                self.parts[i] = Some(h);
                self.pending -= 1;
                if self.pending == 0 {
                    let hashes: Vec<[u8; 20]> = self
                        .parts
                        .iter_mut()
                        .flat_map(|p| p.take().unwrap_or_default())
                        .collect();
                    let name = self
                        .spec
                        .data
                        .file_name()
                        .and_then(|n| n.to_str())
                        .ok_or("the data path has no UTF-8 file name")?
                        .to_string();
                    let list: Vec<(Vec<String>, u64)> =
                        self.files.iter().map(|f| (f.0.clone(), f.1)).collect();
                    let bytes = build_torrent(
                        &name,
                        &list,
                        self.spec.piece_length,
                        &hashes,
                        self.spec.tracker.as_deref(),
                    )
                    .map_err(|e| format!("cannot build the torrent: {e}"))?;
                    *self.result.borrow_mut() = Some(Ok(hashes.len() as u32));
                    let out = self.spec.out.clone();
                    cx.offload(move || MakeStep(Step::Written(std::fs::write(&out, bytes))))
                        .map_err(|e| e.to_string())?;
                }
            }
            Step::Written(r) => {
                r.map_err(|e| format!("cannot write {}: {e}", self.spec.out.display()))?;
                cx.stop();
            }
        }
        Ok(())
    }
}

impl Handler for MakeTorrentHandler {
    type Message = ();
    type Job = MakeStep;

    fn name(&self) -> &str {
        "MakeTorrent"
    }

    fn on_start(&mut self, cx: &mut Context<'_, Self>) -> HandlerResult {
        let data = self.spec.data.clone();
        cx.offload(move || MakeStep(Step::Listed(collect_files(&data))))?;
        Ok(())
    }

    fn on_job(
        &mut self,
        cx: &mut Context<'_, Self>,
        _job: JobId,
        result: JobResult<MakeStep>,
    ) -> HandlerResult {
        let MakeStep(step) = result?;
        if let Err(e) = self.step(cx, step) {
            self.fail(cx, e);
        }
        Ok(())
    }
}
