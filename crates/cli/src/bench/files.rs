//! files: write (PUT) and read (GET) of one file of `--file-size` bytes.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::stats::stat;
use super::{Ctx, Out};

const PATH: &str = "/workspace/bench.bin";

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let client = ctx.client;
    let sb = client
        .create_sandbox(&ctx.create_req())
        .await
        .context("create")?;
    ctx.tracker.sandbox(&sb.id);
    let result = measure(ctx, out, &sb.id).await;
    client.delete_sandbox(&sb.id).await.context("delete")?;
    ctx.tracker.sandbox_gone(&sb.id);
    result
}

async fn measure(ctx: &Ctx<'_>, out: &mut Out, id: &str) -> Result<()> {
    let (client, runs, size) = (ctx.client, ctx.args.file_runs, ctx.args.file_size);
    eprintln!("bench: file write and read x{runs}, {size} bytes");
    let payload = bytes::Bytes::from(pseudo_random(size as usize));
    let (mut writes, mut reads) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        let t0 = Instant::now();
        let info = client
            .write_file(id, PATH, payload.clone(), None)
            .await
            .context("write")?;
        writes.push(t0.elapsed());
        if info.size != size {
            bail!("wrote {size} bytes, the server reports {}", info.size);
        }
        let t0 = Instant::now();
        let back = client.read_file_bytes(id, PATH).await.context("read")?;
        reads.push(t0.elapsed());
        if back.len() as u64 != size || (i == 0 && back != payload) {
            bail!(
                "read back {} bytes that differ from the {size} written",
                back.len()
            );
        }
    }
    let label = human_size(size);
    for (name, samples) in [
        (format!("files: write {label} (PUT)"), writes),
        (format!("files: read {label} (GET)"), reads),
    ] {
        let rate = mib_per_sec(size, &samples);
        out.results
            .push(stat(&name, samples).with_extra(rate, "MiB/s"));
    }
    Ok(())
}

/// Throughput over all samples: bytes moved / time spent, in MiB/s.
pub fn mib_per_sec(size: u64, samples: &[std::time::Duration]) -> f64 {
    let secs: f64 = samples.iter().map(|d| d.as_secs_f64()).sum();
    if secs == 0.0 {
        return 0.0;
    }
    (size as f64 * samples.len() as f64) / (1024.0 * 1024.0) / secs
}

/// `1 MiB`, `512 KiB`, `1.5 GiB`, `100 B`.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, n) in UNITS {
        if bytes >= n {
            let v = bytes as f64 / n as f64;
            return if v == v.trunc() {
                format!("{v:.0} {unit}")
            } else {
                format!("{v:.1} {unit}")
            };
        }
    }
    format!("{bytes} B")
}

/// Incompressible bytes (xorshift), so that no layer can cheat with zeros.
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sizes_and_rates() {
        assert_eq!(human_size(1 << 20), "1 MiB");
        assert_eq!(human_size(1 << 30), "1 GiB");
        assert_eq!(human_size(3 << 29), "1.5 GiB");
        assert_eq!(human_size(512 << 10), "512 KiB");
        assert_eq!(human_size(100), "100 B");
        let rate = mib_per_sec(
            1 << 20,
            &[Duration::from_millis(10), Duration::from_millis(30)],
        );
        assert!((rate - 50.0).abs() < 1e-9);
        assert_eq!(mib_per_sec(1 << 20, &[]), 0.0);
        let p = pseudo_random(1001);
        assert_eq!(p.len(), 1001);
        assert!(p.iter().filter(|&&b| b == 0).count() < 50);
    }
}
