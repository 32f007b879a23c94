//! TensorBoard event files, written directly: scalars only, which is all a run logs. The
//! format is TensorFlow's record file (`events.out.tfevents.<time>.<host>.<pid>.0`): each
//! record is its length (u64 LE), the masked CRC-32C of the length, the bytes, the masked
//! CRC-32C of the bytes; each record one `Event` protobuf (`wall_time` = 1, `step` = 2,
//! `file_version` = 3, `summary` = 5 holding `Summary.Value`s with `tag` = 1 and
//! `simple_value` = 2). The first event names the file version (`brain.Event:2`). The one
//! Rust crate for this (`tensorboard-rs`) is unmaintained and pulls protobuf 2 and an old
//! `image`; these few fields are written by hand and checked with TensorBoard's own reader
//! (`tests/watch.rs`).
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn masked_crc(bytes: &[u8]) -> u32 {
    let c = CRC32C.checksum(bytes);
    ((c >> 15) | (c << 17)).wrapping_add(0xa282_ead8)
}

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    e.push(1 << 3 | 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    e.push(2 << 3);
    varint(step as u64, &mut e);
    body(&mut e);
    e
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// An open event file in a run's folder.
pub struct EventWriter {
    file: std::fs::File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (TensorBoard reads every event file of a folder as one run).
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let path = dir.join(format!(
            "events.out.tfevents.{}.{host}.{}.0",
            now() as u64,
            std::process::id()
        ));
        let file = std::fs::File::create(&path).with_context(|| path.display().to_string())?;
        let mut w = Self { file, path };
        let first = event(now(), 0, |e| field_bytes(3, b"brain.Event:2", e));
        w.record(&first)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut r = Vec::with_capacity(data.len() + 16);
        r.extend_from_slice(&len);
        r.extend_from_slice(&masked_crc(&len).to_le_bytes());
        r.extend_from_slice(data);
        r.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file
            .write_all(&r)
            .with_context(|| self.path.display().to_string())
    }

    /// Scalars `(tag, value)` at `step`, in one event; flushed.
    pub fn scalars(&mut self, step: i64, values: &[(String, f64)]) -> anyhow::Result<()> {
        let mut summary = Vec::new();
        for (tag, v) in values {
            if !v.is_finite() {
                continue;
            }
            let mut value = Vec::new();
            field_bytes(1, tag.as_bytes(), &mut value);
            value.push(2 << 3 | 5);
            value.extend_from_slice(&(*v as f32).to_le_bytes());
            field_bytes(1, &value, &mut summary);
        }
        let e = event(now(), step, |e| field_bytes(5, &summary, e));
        self.record(&e)?;
        self.file
            .flush()
            .with_context(|| self.path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TensorFlow's own test vectors for its masked CRC-32C (`crc32c_test.cc`: "a" and
    /// 32 zero bytes) and a varint.
    #[test]
    fn crc_and_varint_match_tensorflows() {
        assert_eq!(CRC32C.checksum(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
    }

    #[test]
    fn records_frame_their_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = EventWriter::create(dir.path()).unwrap();
        w.scalars(3, &[("loss/train".into(), 0.5)]).unwrap();
        let bytes = std::fs::read(w.path()).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        assert_eq!(
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
            masked_crc(&bytes[..8])
        );
        assert!(bytes[12..12 + n].windows(13).any(|w| w == b"brain.Event:2"));
        assert_eq!(
            u32::from_le_bytes(bytes[12 + n..16 + n].try_into().unwrap()),
            masked_crc(&bytes[12..12 + n])
        );
    }
}
