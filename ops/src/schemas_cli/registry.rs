//! The registry's REST API as `dhanman schemas` speaks it: the client, its answers, and the
//! URL and credentials it is given.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use dhanman_registry::CompatibilityLevel;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

use super::{BASIC_AUTH_ENV, LocalSchema, MEDIA_TYPE, RegistryArgs};

pub(super) struct Registry {
    pub(super) http: reqwest::Client,
    /// Without credentials.
    pub(super) base: Url,
    pub(super) credentials: Option<(String, String)>,
    /// The URL as shown in messages: never with credentials.
    pub(super) display: String,
}

/// An answer of the registry, whatever its status.
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) body: Option<Value>,
    pub(super) text: String,
    pub(super) what: String,
}

impl Registry {
    pub(super) fn new(args: &RegistryArgs) -> anyhow::Result<Self> {
        let raw = match args.url.as_deref().map(str::trim) {
            Some(url) if !url.is_empty() => url.to_owned(),
            _ => embedded_registry_url(args.http_addr),
        };
        let mut base = Url::parse(&raw).map_err(|e| {
            anyhow!(
                "the schema registry URL {:?} is not a URL: {e}",
                redact(&raw)
            )
        })?;
        match base.scheme() {
            "http" => {}
            "https" => bail!(
                "{}: this build of dhanman speaks plain HTTP only; reach the registry through \
                 http:// (e.g. a local TLS-terminating proxy)",
                redact(&raw)
            ),
            other => bail!(
                "the schema registry URL {:?} has scheme {other:?}; expected http://host:port/...",
                redact(&raw)
            ),
        }
        if base.cannot_be_a_base() || base.host().is_none() {
            bail!("the schema registry URL {:?} has no host", redact(&raw));
        }
        let credentials = match (base.username(), std::env::var(BASIC_AUTH_ENV)) {
            ("", Ok(info)) if !info.is_empty() => {
                let (user, password) = info
                    .split_once(':')
                    .with_context(|| format!("{BASIC_AUTH_ENV} must be user:password"))?;
                Some((user.to_owned(), password.to_owned()))
            }
            ("", _) => None,
            (user, _) => Some((
                percent_decode(user),
                percent_decode(base.password().unwrap_or_default()),
            )),
        };
        // Neither can fail on an http URL with a host.
        let _ = base.set_username("");
        let _ = base.set_password(None);
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static(MEDIA_TYPE));
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            display: base.as_str().trim_end_matches('/').to_owned(),
            base,
            credentials,
        })
    }

    pub(super) fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Fails only when there is no answer; an error status is the caller's to judge.
    pub(super) async fn call(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> anyhow::Result<Reply> {
        let url = self.url(segments, query);
        let what = format!("{method} {}", url.path());
        let mut request = self.http.request(method, url);
        if let Some((user, password)) = &self.credentials {
            request = request.basic_auth(user, Some(password));
        }
        if let Some(body) = body {
            request = request
                .header(CONTENT_TYPE, MEDIA_TYPE)
                .body(serde_json::to_vec(body)?);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::Error::new(e.without_url()).context(format!(
                "cannot reach the schema registry at {} ({what})",
                self.display
            ))
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            anyhow::Error::new(e.without_url())
                .context(format!("reading the answer of {} ({what})", self.display))
        })?;
        Ok(Reply {
            status,
            body: serde_json::from_str(&text).ok(),
            text,
            what: format!("{what} at {}", self.display),
        })
    }

    /// The subject's level, else the global one.
    pub(super) async fn level(&self, subject: &str) -> anyhow::Result<CompatibilityLevel> {
        let reply = self
            .call(
                Method::GET,
                &["config", subject],
                &[("defaultToGlobal", "true")],
                None,
            )
            .await?;
        // Registries that ignore `defaultToGlobal` answer 404 for a subject without a level.
        let reply = match reply.status {
            StatusCode::NOT_FOUND => self.call(Method::GET, &["config"], &[], None).await?,
            _ => reply,
        };
        let body = reply.json(&format!("reading the compatibility level of {subject}"))?;
        let level = body["compatibilityLevel"]
            .as_str()
            .or_else(|| body["compatibility"].as_str())
            .with_context(|| format!("the registry answered no level for {subject}: {body}"))?;
        CompatibilityLevel::parse(level)
            .with_context(|| format!("the registry's level {level:?} for {subject}"))
    }

    /// The subject's live versions, oldest first; `None` when it has none.
    pub(super) async fn versions(&self, subject: &str) -> anyhow::Result<Option<Vec<i64>>> {
        let reply = self
            .call(Method::GET, &["subjects", subject, "versions"], &[], None)
            .await?;
        if reply.error_code() == Some(40401) {
            return Ok(None);
        }
        let body = reply.json(&format!("listing the versions of {subject}"))?;
        let mut versions: Vec<i64> = serde_json::from_value(body)
            .with_context(|| format!("the versions of {subject} are not a list of numbers"))?;
        versions.sort_unstable();
        Ok((!versions.is_empty()).then_some(versions))
    }

    pub(super) async fn version(&self, subject: &str, version: i64) -> anyhow::Result<Value> {
        self.call(
            Method::GET,
            &["subjects", subject, "versions", &version.to_string()],
            &[],
            None,
        )
        .await?
        .json(&format!("reading version {version} of {subject}"))
    }

    pub(super) async fn version_text(&self, subject: &str, version: i64) -> anyhow::Result<String> {
        let body = self.version(subject, version).await?;
        body["schema"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("version {version} of {subject} has no schema text"))
    }

    /// (version, id) under which the subject already holds this schema.
    pub(super) async fn lookup(&self, local: &LocalSchema) -> anyhow::Result<Option<(i64, i64)>> {
        let reply = self
            .call(
                Method::POST,
                &["subjects", &local.subject],
                &[],
                Some(&json!({ "schema": local.text })),
            )
            .await?;
        // 40401: no such subject; 40403: not this schema.
        if matches!(reply.error_code(), Some(40401 | 40403)) {
            return Ok(None);
        }
        let body = reply.json(&format!("looking up {} in {}", local.source, local.subject))?;
        match (body["version"].as_i64(), body["id"].as_i64()) {
            (Some(version), Some(id)) => Ok(Some((version, id))),
            _ => bail!("unexpected lookup answer for {}: {body}", local.subject),
        }
    }
}

impl Reply {
    pub(super) fn error_code(&self) -> Option<i64> {
        self.body.as_ref()?.get("error_code")?.as_i64()
    }

    pub(super) fn message(&self) -> String {
        self.body
            .as_ref()
            .and_then(|b| b.get("message"))
            .and_then(Value::as_str)
            .map_or_else(|| self.text.trim().to_owned(), str::to_owned)
    }

    /// A route the registry does not have, as opposed to a subject or version it lacks:
    /// Confluent's 404 with error code 404, a proxy's non-JSON 404, or 405.
    pub(super) fn lacks_endpoint(&self) -> bool {
        match self.status {
            StatusCode::METHOD_NOT_ALLOWED => true,
            StatusCode::NOT_FOUND => matches!(self.error_code(), Some(404) | None),
            _ => false,
        }
    }

    /// The JSON body of a successful answer; any other answer is an error naming `doing`.
    pub(super) fn json(self, doing: &str) -> anyhow::Result<Value> {
        if !self.status.is_success() {
            let hint = match self.status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    format!(
                        " (credentials: put them in the URL or set {BASIC_AUTH_ENV}=user:password)"
                    )
                }
                _ => String::new(),
            };
            bail!(
                "{doing}: {} answered HTTP {}: {}{hint}",
                self.what,
                self.status,
                self.message()
            );
        }
        self.body
            .with_context(|| format!("{doing}: {} answered no JSON", self.what))
    }
}

/// Where the API serves its embedded registry (an unspecified bind address is reached on
/// localhost). [`crate::Config::registry_url`] uses it too.
pub fn embedded_registry_url(mut http_addr: SocketAddr) -> String {
    if http_addr.ip().is_unspecified() {
        http_addr.set_ip(Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{http_addr}/schema-registry")
}

/// The URL with any password replaced, for messages.
pub(super) fn redact(raw: &str) -> String {
    match Url::parse(raw) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(_) => raw.to_owned(),
        // Unparsable: keep only what precedes a possible `user:pass@`.
        Err(_) => match raw.rsplit_once('@') {
            Some((_, host)) => format!("***@{host}"),
            None => raw.to_owned(),
        },
    }
}

/// URL userinfo is percent-encoded (`p%40ss` is `p@ss`).
pub(super) fn percent_decode(raw: &str) -> String {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .into_owned()
}
