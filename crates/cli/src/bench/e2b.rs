//! e2b: what an E2B SDK's sandbox costs on Warren's E2B surface — `POST /v2/sandboxes`,
//! then envd's `process.Process/Start` (Connect, enveloped JSON) of `echo ready` to its
//! first output, and `DELETE /sandboxes/{id}` — interleaved with Warren's own cold
//! lifecycle as the baseline of the run; and the round trip of a command (`Start` of
//! `true` to its end event) on a running sandbox.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use reqwest::Method;
use serde_json::json;
use warren_api::CreateSandboxRequest;

use super::cold::lifecycle;
use super::opensandbox::json_of;
use super::stats::stat;
use super::{Ctx, Out};

pub const LIFECYCLE: &str = "e2b: create → first output → delete";
pub const COMMAND: &str = "e2b: command round trip (Start → end)";
pub const NATIVE: &str = "native, same run: create → first output → delete";

/// A created sandbox: its id and envd access token.
async fn create(ctx: &Ctx<'_>, template: &str) -> Result<(String, String)> {
    let created = json_of(
        ctx.client
            .raw_request(Method::POST, "/v2/sandboxes")
            .json(&json!({"templateID": template, "timeout": 600}))
            .send()
            .await
            .context("create")?,
        "create",
    )
    .await?;
    let id = created["sandboxID"]
        .as_str()
        .context("create: no sandboxID")?
        .to_string();
    ctx.tracker.sandbox(&id);
    let token = created["envdAccessToken"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((id, token))
}

/// `Start` of `cmd` as the SDK sends it; returns when the first data event arrived and
/// when the stream ended.
async fn run_command(
    ctx: &Ctx<'_>,
    http: &reqwest::Client,
    id: &str,
    token: &str,
    cmd: &str,
) -> Result<(Option<Instant>, Instant)> {
    let msg = json!({
        "process": {"cmd": "/bin/bash", "args": ["-l", "-c", cmd]},
        "stdin": false,
    })
    .to_string();
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(msg.as_bytes());
    let url = ctx
        .client
        .base_url()
        .join("/process.Process/Start")
        .context("envd url")?;
    let resp = http
        .post(url)
        .header("content-type", "application/connect+json")
        .header("connect-protocol-version", "1")
        .header("e2b-sandbox-id", id)
        .header("x-access-token", token)
        .body(body)
        .send()
        .await
        .context("Start")?;
    if !resp.status().is_success() {
        bail!("Start: {}", resp.status());
    }
    let mut stream = resp.bytes_stream();
    let (mut seen, mut first) = (Vec::new(), None);
    while let Some(chunk) = stream.next().await {
        seen.extend_from_slice(&chunk.context("Start stream")?);
        if first.is_none() && seen.windows(6).any(|w| w == b"\"data\"") {
            first = Some(Instant::now());
        }
    }
    if !seen.windows(5).any(|w| w == b"\"end\"") {
        bail!(
            "Start: no end event in {:?}",
            String::from_utf8_lossy(&seen)
        );
    }
    Ok((first, Instant::now()))
}

async fn kill(ctx: &Ctx<'_>, id: &str) -> Result<()> {
    let del = ctx
        .client
        .raw_request(Method::DELETE, &format!("/sandboxes/{id}"))
        .send()
        .await
        .context("delete")?;
    if del.status().as_u16() != 204 {
        bail!("delete: {}", del.status());
    }
    ctx.tracker.sandbox_gone(id);
    Ok(())
}

/// One SDK-style lifecycle: [start, first output, deleted].
async fn e2b_lifecycle(
    ctx: &Ctx<'_>,
    http: &reqwest::Client,
    template: &str,
) -> Result<[Instant; 3]> {
    let t0 = Instant::now();
    let (id, token) = create(ctx, template).await?;
    let (first, _) = run_command(ctx, http, &id, &token, "echo ready").await?;
    let first = first.context("Start: no output")?;
    kill(ctx, &id).await?;
    Ok([t0, first, Instant::now()])
}

pub async fn run(ctx: &Ctx<'_>, out: &mut Out) -> Result<()> {
    let runs = ctx.args.runs;
    let template = ctx
        .args
        .image
        .clone()
        .unwrap_or_else(|| warren_api::DEFAULT_IMAGE.into());
    eprintln!("bench: e2b lifecycle x{runs} (and the native one, interleaved)");
    let http = reqwest::Client::new();
    let native_req = CreateSandboxRequest {
        image: ctx.args.image.clone(),
        ..Default::default()
    };
    let (mut total, mut native) = (Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which goes first (a delete leaves kernel work for the next create).
        for e2b_first in [i % 2 == 0, i % 2 != 0] {
            if e2b_first {
                let t = e2b_lifecycle(ctx, &http, &template).await?;
                total.push(t[2] - t[0]);
            } else {
                let (t, _) = lifecycle(ctx, &native_req).await?;
                native.push(t[3] - t[0]);
            }
        }
    }
    let (id, token) = create(ctx, &template).await?;
    let mut rtt = Vec::new();
    for _ in 0..runs {
        let t0 = Instant::now();
        let (_, end) = run_command(ctx, &http, &id, &token, "true").await?;
        rtt.push(end - t0);
    }
    kill(ctx, &id).await?;
    out.results.push(stat(LIFECYCLE, total));
    out.results.push(stat(NATIVE, native));
    out.results.push(stat(COMMAND, rtt));
    if let (Some(e), Some(nat)) = (
        out.stat(LIFECYCLE).and_then(|s| s.p50_ms),
        out.stat(NATIVE).and_then(|s| s.p50_ms),
    ) {
        out.note(format!(
            "e2b: the SDK's lifecycle costs {:.2}x Warren's own (p50 {e:.1} ms vs {nat:.1} ms)",
            e / nat
        ));
    }
    Ok(())
}
