//! Templates: images built from a Dockerfile (`POST /v1/templates`, read as Server-Sent
//! Events for the build log).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use reqwest::header::{HeaderValue, ACCEPT};
use reqwest::Method;
use warren_api::{BuildLog, BuildStep, Template, TemplateList};

use crate::images::error_event;
use crate::{check, decode, sse, Client, Error};

/// What a build is given ([`Client::build_template_events`]).
#[derive(Debug, Default)]
pub struct TemplateBuild {
    pub name: String,
    pub dockerfile: String,
    /// A tar archive (plain, gzip or zstd) of the build context.
    pub context: Option<reqwest::Body>,
    pub build_args: BTreeMap<String, String>,
    pub start_cmd: Option<String>,
    pub ready_cmd: Option<String>,
    pub ready_timeout_secs: Option<u64>,
    /// The RUN steps' network, as in a create.
    pub network: Option<warren_api::NetworkRequest>,
    /// What runs the RUN steps (default: the server's default runtime).
    pub runtime: Option<warren_api::Runtime>,
    pub no_cache: bool,
}

/// One event of a build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildEvent {
    /// An instruction starts (`cached`: the build cache had it).
    Step(BuildStep),
    /// Output of a RUN step.
    Log(BuildLog),
    /// The build is done. The stream ends after it.
    Done(Box<Template>),
}

/// The events of a build; an `error` event comes as an [`Error::Api`] and ends it.
pub struct BuildEvents(sse::EventStream<BuildEvent>);

impl std::fmt::Debug for BuildEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildEvents")
            .field("finished", &self.0.finished())
            .finish()
    }
}

impl Stream for BuildEvents {
    type Item = Result<BuildEvent, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.0).poll_next(cx)
    }
}

fn convert(ev: sse::SseEvent) -> Option<Result<BuildEvent, Error>> {
    let bad = |e: serde_json::Error| Error::Decode(format!("bad {} event: {e}", ev.event));
    match ev.event.as_str() {
        "step" => Some(
            serde_json::from_str(&ev.data)
                .map(BuildEvent::Step)
                .map_err(bad),
        ),
        "log" => Some(
            serde_json::from_str(&ev.data)
                .map(BuildEvent::Log)
                .map_err(bad),
        ),
        "template" => Some(
            serde_json::from_str(&ev.data)
                .map(|t| BuildEvent::Done(Box::new(t)))
                .map_err(bad),
        ),
        "error" => Some(match error_event(&ev.data) {
            Ok(e) => Err(e),
            Err(e) => Err(bad(e)),
        }),
        _ => None,
    }
}

impl TemplateBuild {
    fn form(self) -> Result<reqwest::multipart::Form, Error> {
        let mut form = reqwest::multipart::Form::new()
            .text("name", self.name)
            .text("dockerfile", self.dockerfile);
        if !self.build_args.is_empty() {
            let args = serde_json::to_string(&self.build_args)
                .map_err(|e| Error::Decode(e.to_string()))?;
            form = form.text("build_args", args);
        }
        if let Some(c) = self.start_cmd {
            form = form.text("start_cmd", c);
        }
        if let Some(c) = self.ready_cmd {
            form = form.text("ready_cmd", c);
        }
        if let Some(s) = self.ready_timeout_secs {
            form = form.text("ready_timeout_secs", s.to_string());
        }
        if let Some(n) = self.network {
            let n = serde_json::to_string(&n).map_err(|e| Error::Decode(e.to_string()))?;
            form = form.text("network", n);
        }
        if let Some(r) = self.runtime {
            form = form.text("runtime", r.as_str());
        }
        if self.no_cache {
            form = form.text("no_cache", "true");
        }
        if let Some(body) = self.context {
            form = form.part(
                "context",
                reqwest::multipart::Part::stream(body).file_name("context.tar"),
            );
        }
        Ok(form)
    }
}

impl Client {
    /// `POST /v1/templates`: build and answer when done.
    pub async fn build_template(&self, build: TemplateBuild) -> Result<Template, Error> {
        let resp = self
            .request(Method::POST, &["v1", "templates"])
            .multipart(build.form()?)
            .send()
            .await?;
        decode(check(resp).await?).await
    }

    /// `POST /v1/templates` with `Accept: text/event-stream`: each step, the RUN steps'
    /// output, then the template.
    pub async fn build_template_events(&self, build: TemplateBuild) -> Result<BuildEvents, Error> {
        let resp = self
            .request(Method::POST, &["v1", "templates"])
            .header(ACCEPT, HeaderValue::from_static("text/event-stream"))
            .multipart(build.form()?)
            .send()
            .await?;
        let resp = check(resp).await?;
        Ok(BuildEvents(sse::EventStream::new(resp, convert, true)))
    }

    /// `GET /v1/templates`.
    pub async fn list_templates(&self) -> Result<Vec<Template>, Error> {
        let list: TemplateList = self
            .call(Method::GET, &["v1", "templates"], None::<&()>)
            .await?;
        Ok(list.templates)
    }

    /// `GET /v1/templates/{name}`.
    pub async fn get_template(&self, name: &str) -> Result<Template, Error> {
        self.call(Method::GET, &["v1", "templates", name], None::<&()>)
            .await
    }

    /// `DELETE /v1/templates/{name}` (`image_in_use` while a sandbox, pool or snapshot uses
    /// it).
    pub async fn delete_template(&self, name: &str) -> Result<(), Error> {
        let resp = self
            .request(Method::DELETE, &["v1", "templates", name])
            .send()
            .await?;
        check(resp).await.map(drop)
    }
}
