//! opensandbox: what an OpenSandbox SDK's create costs on Warren's `/opensandbox` surface —
//! `POST /v1/sandboxes` (the SDK's default entrypoint), the two endpoint look-ups the SDK
//! makes at once (execd, egress), execd's `/ping`, then a `/command` to its first output
//! and a delete — interleaved with Warren's own cold lifecycle as the baseline of the run.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use reqwest::Method;
use serde_json::{json, Value};
use warren_api::CreateSandboxRequest;

use super::cold::lifecycle;
use super::stats::stat;
use super::{Ctx, Out};

pub const READY: &str = "opensandbox: create → endpoints → ping (SDK ready)";
pub const LIFECYCLE: &str = "opensandbox: create → first output → delete";
pub const NATIVE: &str = "native, same run: create → first output → delete";

pub(super) async fn json_of(resp: reqwest::Response, what: &str) -> Result<Value> {
    let status = resp.status();
    let body = resp.text().await.with_context(|| format!("{what}: body"))?;
    if !status.is_success() {
        bail!("{what}: {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("{what}: not JSON: {body}"))
}

/// The headers an endpoint answer says to send.
fn with_headers(mut req: reqwest::RequestBuilder, endpoint: &Value) -> reqwest::RequestBuilder {
    if let Some(h) = endpoint["headers"].as_object() {
        for (k, v) in h {
            if let Some(v) = v.as_str() {
                req = req.header(k, v);
            }
        }
    }
    req
}

/// One SDK-style lifecycle: [start, ready, first output, deleted].
async fn os_lifecycle(ctx: &Ctx<'_>, image: &str) -> Result<[Instant; 4]> {
    let c = ctx.client;
    let t0 = Instant::now();
    let body = json!({
        "image": {"uri": image},
        "timeout": 600,
        "entrypoint": ["tail", "-f", "/dev/null"],
    });
    let created = json_of(
        c.raw_request(Method::POST, "/opensandbox/v1/sandboxes")
            .json(&body)
            .send()
            .await
            .context("create")?,
        "create",
    )
    .await?;
    let id = created["id"].as_str().context("create: no id")?.to_string();
    ctx.tracker.sandbox(&id);
    let endpoint = |port: u16| {
        let path = format!("/opensandbox/v1/sandboxes/{id}/endpoints/{port}");
        async move { json_of(c.raw_request(Method::GET, &path).send().await?, "endpoint").await }
    };
    let (execd, egress) = tokio::join!(endpoint(44772), endpoint(18080));
    let (execd, _) = (execd?, egress?);
    let base = format!(
        "{}://{}",
        c.base_url().scheme(),
        execd["endpoint"].as_str().context("endpoint: none")?
    );
    let http = reqwest::Client::new();
    let ping = with_headers(http.get(format!("{base}/ping")), &execd)
        .send()
        .await
        .context("ping")?;
    if !ping.status().is_success() {
        bail!("ping: {}", ping.status());
    }
    let t1 = Instant::now();
    let resp = with_headers(http.post(format!("{base}/command")), &execd)
        .json(&json!({"command": "echo ready"}))
        .send()
        .await
        .context("command")?;
    let mut stream = resp.bytes_stream();
    let mut seen = Vec::new();
    let mut t2 = None;
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.context("command stream")?);
        if t2.is_none() && seen.windows(8).any(|w| w == b"\"stdout\"") {
            t2 = Some(Instant::now());
        }
    }
    let t2 =
        t2.with_context(|| format!("no stdout event in {:?}", String::from_utf8_lossy(&seen)))?;
    let del = c
        .raw_request(Method::DELETE, &format!("/opensandbox/v1/sandboxes/{id}"))
        .send()
        .await
        .context("delete")?;
    if del.status().as_u16() != 204 {
        bail!("delete: {}", del.status());
    }
    ctx.tracker.sandbox_gone(&id);
    Ok([t0, t1, t2, Instant::now()])
}

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let runs = ctx.args.runs;
    let image = ctx
        .args
        .image
        .clone()
        .unwrap_or_else(|| warren_api::DEFAULT_IMAGE.into());
    eprintln!("bench: opensandbox lifecycle x{runs} (and the native one, interleaved)");
    let native_req = CreateSandboxRequest {
        image: ctx.args.image.clone(),
        ..Default::default()
    };
    let (mut ready, mut total, mut native) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which goes first (a delete leaves kernel work for the next create).
        for os_first in [i % 2 == 0, i % 2 != 0] {
            if os_first {
                let t = os_lifecycle(ctx, &image).await?;
                ready.push(t[1] - t[0]);
                total.push(t[3] - t[0]);
            } else {
                let (t, _) = lifecycle(ctx, &native_req).await?;
                native.push(t[3] - t[0]);
            }
        }
    }
    out.results.push(stat(READY, ready));
    out.results.push(stat(LIFECYCLE, total));
    out.results.push(stat(NATIVE, native));
    if let (Some(os), Some(nat)) = (
        out.stat(LIFECYCLE).and_then(|s| s.p50_ms),
        out.stat(NATIVE).and_then(|s| s.p50_ms),
    ) {
        out.note(format!(
            "opensandbox: the SDK's lifecycle costs {:.2}x Warren's own (p50 {os:.1} ms vs {nat:.1} ms)",
            os / nat
        ));
    }
    Ok(())
}
