//! What CRIU measured, read from the `stats-dump` / `stats-restore` file it
//! writes into its work directory (CRIU's `criu/stats.c`, `images/stats.proto`),
//! plus what the runtime measured around it: the command's wall time, the
//! CRIU request's round trip, and the difference — our own overhead.
//!
//! The file is a CRIU service image: two magics (`IMG_SERVICE_MAGIC`,
//! `STATS_MAGIC`), a 32-bit length, then a `stats_entry` protobuf message.
//! rust-criu generates only the RPC types, so the message is read with the
//! protobuf crate's unknown-field access, by field number.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use protobuf::well_known_types::empty::Empty;
use protobuf::{Message, UnknownValueRef};
use serde::Serialize;

const IMG_SERVICE_MAGIC: u32 = 0x5510_5940;
const STATS_MAGIC: u32 = 0x5709_3306;

/// `dump_stats_entry`: times in microseconds, as CRIU records them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DumpStats {
    pub freezing_time_us: u64,
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub pages_lazy: u64,
    pub irmap_resolve_us: u64,
}

impl DumpStats {
    /// CRIU keeps its counters and timers in shared memory for the whole
    /// swrk session, so after several PRE_DUMPs and a DUMP in one session
    /// each stats file holds the sum so far: one request's share is the
    /// difference from the previous file.
    pub fn since(&self, before: &DumpStats) -> DumpStats {
        DumpStats {
            freezing_time_us: self
                .freezing_time_us
                .saturating_sub(before.freezing_time_us),
            frozen_time_us: self.frozen_time_us.saturating_sub(before.frozen_time_us),
            memdump_time_us: self.memdump_time_us.saturating_sub(before.memdump_time_us),
            memwrite_time_us: self
                .memwrite_time_us
                .saturating_sub(before.memwrite_time_us),
            pages_scanned: self.pages_scanned.saturating_sub(before.pages_scanned),
            pages_skipped_parent: self
                .pages_skipped_parent
                .saturating_sub(before.pages_skipped_parent),
            pages_written: self.pages_written.saturating_sub(before.pages_written),
            pages_lazy: self.pages_lazy.saturating_sub(before.pages_lazy),
            irmap_resolve_us: self
                .irmap_resolve_us
                .saturating_sub(before.irmap_resolve_us),
        }
    }
}

/// `restore_stats_entry`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RestoreStats {
    pub pages_compared: u64,
    pub pages_skipped_cow: u64,
    pub forking_time_us: u64,
    pub restore_time_us: u64,
    pub pages_restored: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum CriuStats {
    Dump(DumpStats),
    Restore(RestoreStats),
}

/// The checkpoint's report (this struct), written beside its images.
pub const STATS_FILE: &str = "cntrlive-stats.json";

/// Everything `--stats` reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub operation: &'static str,
    pub container_id: String,
    /// The whole command, from its start to its end.
    pub wall_time_ms: f64,
    /// The CRIU request (DUMP, PRE_DUMP or RESTORE) from send to reply.
    pub criu_request_ms: f64,
    /// Wall time not spent inside the CRIU request.
    pub runtime_overhead_ms: f64,
    pub criu: CriuStats,
    /// Bytes in the image directory (0 for a diskless dump).
    pub image_bytes: u64,
    pub stats_file: PathBuf,
    /// Pre-copy rounds before this dump (`--pre-dump-rounds`), oldest first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<RoundReport>,
    /// Why pre-copy stopped before its bound (`--until-converged`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_copy_stopped: Option<String>,
}

/// One pre-dump round of a pre-copy checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    pub round: u32,
    pub image_path: PathBuf,
    pub criu_request_ms: f64,
    pub frozen_time_us: u64,
    pub pages_scanned: u64,
    pub pages_skipped_parent: u64,
    pub pages_written: u64,
    pub image_bytes: u64,
}

impl RoundReport {
    pub fn new(round: u32, dir: &Path, took: Duration, d: &DumpStats) -> RoundReport {
        RoundReport {
            round,
            image_path: dir.to_path_buf(),
            criu_request_ms: ms(took),
            frozen_time_us: d.frozen_time_us,
            pages_scanned: d.pages_scanned,
            pages_skipped_parent: d.pages_skipped_parent,
            pages_written: d.pages_written,
            image_bytes: dir_bytes(dir),
        }
    }
}

/// Read a stats file CRIU wrote.
pub fn read(path: &Path) -> Result<CriuStats> {
    let data = std::fs::read(path)
        .with_context(|| format!("CRIU wrote no statistics at {}", path.display()))?;
    parse(&data).with_context(|| format!("unreadable CRIU statistics in {}", path.display()))
}

fn u32_at(d: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(d.get(at..at + 4)?.try_into().ok()?))
}

pub fn parse(data: &[u8]) -> Result<CriuStats> {
    if u32_at(data, 0) != Some(IMG_SERVICE_MAGIC) || u32_at(data, 4) != Some(STATS_MAGIC) {
        bail!("not a CRIU stats image (bad magic)");
    }
    let len = u32_at(data, 8).context("truncated")? as usize;
    let body = data.get(12..12 + len).context("truncated")?;
    let entry = Empty::parse_from_bytes(body)?;
    for (num, v) in entry.special_fields.unknown_fields().iter() {
        let UnknownValueRef::LengthDelimited(inner) = v else {
            continue;
        };
        let f = fields(inner)?;
        let g = |n: u32| {
            f.iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| *v)
                .unwrap_or(0)
        };
        match num {
            1 => {
                return Ok(CriuStats::Dump(DumpStats {
                    freezing_time_us: g(1),
                    frozen_time_us: g(2),
                    memdump_time_us: g(3),
                    memwrite_time_us: g(4),
                    pages_scanned: g(5),
                    pages_skipped_parent: g(6),
                    pages_written: g(7),
                    irmap_resolve_us: g(8),
                    pages_lazy: g(9),
                }))
            }
            2 => {
                return Ok(CriuStats::Restore(RestoreStats {
                    pages_compared: g(1),
                    pages_skipped_cow: g(2),
                    forking_time_us: g(3),
                    restore_time_us: g(4),
                    pages_restored: g(5),
                }))
            }
            _ => {}
        }
    }
    bail!("the stats image holds neither dump nor restore statistics")
}

/// The varint fields of a message, by number.
fn fields(msg: &[u8]) -> Result<Vec<(u32, u64)>> {
    let m = Empty::parse_from_bytes(msg)?;
    Ok(m.special_fields
        .unknown_fields()
        .iter()
        .filter_map(|(n, v)| match v {
            UnknownValueRef::Varint(x) => Some((n, x)),
            _ => None,
        })
        .collect())
}

/// Total size of the image files directly in `dir` (not CRIU's logs and
/// stats, which share the directory when the work path is the image path,
/// nor our report beside them).
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    !n.ends_with(".log") && !n.starts_with("stats-") && n != STATS_FILE
                })
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

impl Report {
    pub fn new(
        operation: &'static str,
        container_id: &str,
        wall: Duration,
        criu_request: Duration,
        stats_file: PathBuf,
        image_dir: Option<&Path>,
    ) -> Result<Report> {
        Ok(Report {
            operation,
            container_id: container_id.to_string(),
            wall_time_ms: ms(wall),
            criu_request_ms: ms(criu_request),
            runtime_overhead_ms: ms(wall.saturating_sub(criu_request)),
            criu: read(&stats_file)?,
            image_bytes: image_dir.map(dir_bytes).unwrap_or(0),
            stats_file,
            rounds: Vec::new(),
            pre_copy_stopped: None,
        })
    }

    /// `text`: one `name: value` line each, as a person reads them.
    pub fn render(&self, format: StatsFormat) -> String {
        match format {
            StatsFormat::Json => serde_json::to_string(self).unwrap_or_default(),
            StatsFormat::Text => {
                let ms = |v: f64| format!("{v:.1} ms");
                let us = |v: u64| ms(v as f64 / 1e3);
                let mut rows = vec![
                    ("wall time", ms(self.wall_time_ms)),
                    ("CRIU request", ms(self.criu_request_ms)),
                    ("runtime overhead", ms(self.runtime_overhead_ms)),
                ];
                match &self.criu {
                    CriuStats::Dump(d) => rows.extend([
                        ("freezing time", us(d.freezing_time_us)),
                        ("frozen time", us(d.frozen_time_us)),
                        ("memory dump time", us(d.memdump_time_us)),
                        ("memory write time", us(d.memwrite_time_us)),
                        ("pages scanned", d.pages_scanned.to_string()),
                        ("pages skipped parent", d.pages_skipped_parent.to_string()),
                        ("pages written", d.pages_written.to_string()),
                        ("pages lazy", d.pages_lazy.to_string()),
                    ]),
                    CriuStats::Restore(r) => rows.extend([
                        ("forking time", us(r.forking_time_us)),
                        ("restore time", us(r.restore_time_us)),
                        ("pages restored", r.pages_restored.to_string()),
                        ("pages compared", r.pages_compared.to_string()),
                        ("pages skipped (COW)", r.pages_skipped_cow.to_string()),
                    ]),
                }
                rows.push(("image size", format!("{} bytes", self.image_bytes)));
                rows.push(("CRIU stats file", self.stats_file.display().to_string()));
                let mut s = format!("{} of {}", self.operation, self.container_id);
                for r in &self.rounds {
                    s += &format!(
                        "\n  pre-dump round {}: {} pages written ({} skipped, in parent), {} bytes, frozen {}, CRIU {}",
                        r.round,
                        r.pages_written,
                        r.pages_skipped_parent,
                        r.image_bytes,
                        us(r.frozen_time_us),
                        ms(r.criu_request_ms)
                    );
                }
                if let Some(why) = &self.pre_copy_stopped {
                    s += &format!("\n  pre-copy stopped: {why}");
                }
                if !self.rounds.is_empty() {
                    s += "\n  final dump:";
                }
                for (k, v) in rows {
                    s += &format!("\n  {:<22}{v}", format!("{k}:"));
                }
                s
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatsFormat {
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stats-dump CRIU 4.2.1 wrote here for a busybox loop.
    const DUMP: &[u8] = &[
        0x40, 0x59, 0x10, 0x55, 0x06, 0x33, 0x09, 0x57, 0x23, 0x00, 0x00, 0x00, 0x0a, 0x21, 0x08,
        0x81, 0x04, 0x10, 0x8d, 0xc6, 0x04, 0x18, 0xed, 0x07, 0x20, 0xca, 0x01, 0x28, 0x30, 0x30,
        0x00, 0x38, 0x22, 0x40, 0x00, 0x48, 0x00, 0x50, 0x08, 0x58, 0x08, 0x60, 0x00, 0x68, 0x00,
        0x70, 0x00,
    ];

    #[test]
    fn parses_criu_dump_stats_ok() {
        let CriuStats::Dump(d) = parse(DUMP).unwrap() else {
            panic!("not dump stats")
        };
        assert_eq!(d.freezing_time_us, 513);
        assert_eq!(d.frozen_time_us, 74509);
        assert_eq!(d.memdump_time_us, 1005);
        assert_eq!(d.memwrite_time_us, 202);
        assert_eq!(d.pages_scanned, 48);
        assert_eq!(d.pages_written, 34);
        assert_eq!(d.pages_skipped_parent, 0);
    }

    #[test]
    fn bad_magic_and_truncation_err() {
        assert!(parse(&DUMP[4..]).is_err());
        assert!(parse(&DUMP[..20]).is_err());
        assert!(parse(&[]).is_err());
    }
}

/// Pages that CRIU's pagemap images in `dir` mark lazy (PE_LAZY): what a
/// post-copy restore fetches from the dumping side. The dump's stats do not
/// count them (`pages_lazy` stays 0 with a page server in CRIU 4.2).
///
/// Image layout (criu/include/magic.h, images/pagemap.proto): two u32
/// magics, then u32-length-prefixed protobuf records, the first a
/// `pagemap_head`, then `pagemap_entry {vaddr=1, compat_nr_pages=2,
/// in_parent=3, flags=4, nr_pages=5}`.
pub fn lazy_pages_in(dir: &Path) -> u64 {
    const PE_LAZY: u64 = 1 << 1;
    let mut total = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !(name.starts_with("pagemap-") && name.ends_with(".img")) {
            continue;
        }
        let Ok(data) = std::fs::read(e.path()) else {
            continue;
        };
        let mut pos = 8;
        let mut first = true;
        while pos + 4 <= data.len() {
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
            pos += 4;
            let Some(rec) = data.get(pos..pos + len) else {
                break;
            };
            pos += len;
            if std::mem::take(&mut first) {
                continue;
            }
            let (mut flags, mut pages, mut compat) = (0u64, None, 0u64);
            let mut p = 0;
            while p < rec.len() {
                let Some((key, n)) = varint(&rec[p..]) else {
                    break;
                };
                p += n;
                let Some((val, n)) = varint(&rec[p..]) else {
                    break;
                };
                p += n;
                match key {
                    0x10 => compat = val,
                    0x20 => flags = val,
                    0x28 => pages = Some(val),
                    _ => {}
                }
            }
            if flags & PE_LAZY != 0 {
                total += pages.unwrap_or(compat);
            }
        }
    }
    total
}

/// A protobuf varint: (value, bytes used). Only varint fields occur in a
/// pagemap entry.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().enumerate().take(10) {
        v |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod pagemap_tests {
    use super::*;

    fn rec(fields: &[(u8, u64)]) -> Vec<u8> {
        let mut pb = Vec::new();
        for (key, mut v) in fields.iter().copied() {
            pb.push(key);
            loop {
                let b = (v & 0x7f) as u8;
                v >>= 7;
                if v == 0 {
                    pb.push(b);
                    break;
                }
                pb.push(b | 0x80);
            }
        }
        let mut out = (pb.len() as u32).to_le_bytes().to_vec();
        out.extend(pb);
        out
    }

    #[test]
    fn lazy_pages_counted_from_pagemap_ok() {
        let d = tempfile::tempdir().unwrap();
        let mut img = vec![0u8; 8];
        img.extend(rec(&[(0x08, 1)])); // pagemap_head {pages_id: 1}
        img.extend(rec(&[(0x08, 0x1000), (0x10, 300), (0x20, 2 | 4)])); // lazy
        img.extend(rec(&[(0x08, 0x9000), (0x10, 7), (0x20, 4)])); // present only
        img.extend(rec(&[(0x08, 0xa000), (0x10, 1), (0x20, 2), (0x28, 70000)])); // nr_pages wins
        std::fs::write(d.path().join("pagemap-1.img"), img).unwrap();
        assert_eq!(lazy_pages_in(d.path()), 70300);
    }
}
