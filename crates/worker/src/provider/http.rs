//! What the two HTTP providers share: the client, reading a bounded answer,
//! `Retry-After`, and turning transport errors and bare HTTP statuses into an
//! [`Outcome`].

use std::{error::Error as _, time::Duration};

use chrono::{DateTime, NaiveDateTime, Utc};
use reqwest::{Client, Response, StatusCode, header::HeaderMap, redirect};

use super::{Outcome, ProviderError};

/// A bound on `Retry-After` that only keeps date arithmetic from
/// overflowing: any wait this long is past every sensible retry deadline, so
/// the message fails rather than being retried sooner than asked.
pub(crate) const MAX_RETRY_AFTER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How much of an error text (detail) is kept, in characters.
pub(crate) const MAX_DETAIL_CHARS: usize = 500;

/// How much of an answer's body is read; the rest is dropped unread.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// The longest connect timeout, whatever the whole call may take.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The `User-Agent` of every provider call.
pub(crate) const USER_AGENT: &str = concat!("kurir/", env!("CARGO_PKG_VERSION"));

/// One client per provider, built once and shared by every call: rustls, the
/// whole call bounded by `timeout`, no redirects followed (a 3xx is an answer).
/// Every connection is kept for reuse while it is idle less than a minute:
/// their number is bounded by the calls in flight (the worker's
/// concurrency), and a cap below that would open and close connections all
/// the time under load.
pub(crate) fn client(timeout: Duration) -> Result<Client, String> {
    Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .timeout(timeout)
        .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_keepalive(Duration::from_secs(30))
        .redirect(redirect::Policy::none())
        .build()
        .map_err(|err| format!("cannot build the HTTP client: {}", error_text(&err)))
}

/// An answer's status, headers and (at most [`MAX_BODY_BYTES`] of its) body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Answer {
    /// Reads the answer's body, up to [`MAX_BODY_BYTES`].
    ///
    /// If reading the body fails (the timeout struck mid-body, the connection
    /// dropped), the status still stands: the body read so far is kept and the
    /// error returned alongside for the caller to log.
    pub(crate) async fn read(mut response: Response) -> (Self, Option<reqwest::Error>) {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        let mut failure = None;
        while body.len() < MAX_BODY_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY_BYTES - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                }
                Ok(None) => break,
                Err(err) => {
                    failure = Some(err);
                    break;
                }
            }
        }
        (
            Self {
                status,
                headers,
                body,
            },
            failure,
        )
    }

    /// The body as text (lossy), trimmed and cut to [`MAX_DETAIL_CHARS`], or
    /// the status's reason phrase if the body is empty.
    pub(crate) fn detail(&self) -> String {
        let text = String::from_utf8_lossy(&self.body);
        let text = text.trim();
        if text.is_empty() {
            reason(self.status)
        } else {
            truncate(text, MAX_DETAIL_CHARS)
        }
    }

    /// `Retry-After` of this answer, if present and sensible.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        retry_after(&self.headers, Utc::now())
    }

    /// Classifies a non-2xx answer by its status alone: 429 and 5xx are
    /// retryable (honouring `Retry-After`), anything else permanent.
    pub(crate) fn status_outcome(&self, error: ProviderError) -> Outcome {
        if is_retryable_status(self.status) {
            Outcome::Retryable {
                error,
                retry_after: self.retry_after(),
            }
        } else {
            Outcome::Permanent { error }
        }
    }
}

/// Whether an HTTP status alone says "try again later": 429 or 5xx.
pub(crate) fn is_retryable_status(status: StatusCode) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// Our own error code for a bare HTTP status: `http_503`.
pub(crate) fn status_code(status: StatusCode) -> String {
    format!("http_{}", status.as_u16())
}

/// The status's reason phrase ("Service Unavailable"), or `HTTP 599`.
pub(crate) fn reason(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => reason.to_owned(),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// Cuts `text` to at most `max` characters (never inside a character), adding
/// `…` when it cut.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some(_) => {
            let keep: String = text.chars().take(max.saturating_sub(1)).collect();
            format!("{keep}…")
        }
    }
}

/// The outcome of a call that got no answer: timeouts and connection failures
/// are retryable (`timeout`, `connect`), as is any other transport failure
/// (`transport`); a request that could not even be built is permanent
/// (`request_invalid`). The detail never contains the URL (which may carry a
/// secret in its query) nor any header.
pub(crate) fn transport_outcome(err: &reqwest::Error) -> Outcome {
    let detail = truncate(&error_text(err), MAX_DETAIL_CHARS);
    let code = if err.is_timeout() {
        "timeout"
    } else if err.is_connect() {
        "connect"
    } else if err.is_builder() {
        return Outcome::Permanent {
            error: ProviderError::new("request_invalid", detail, None),
        };
    } else {
        "transport"
    };
    Outcome::Retryable {
        error: ProviderError::new(code, detail, None),
        retry_after: None,
    }
}

/// A reqwest error and its causes, `: `-separated, without the URL.
pub(crate) fn error_text(err: &reqwest::Error) -> String {
    // The URL is only ever in the top-level message: cut it out there.
    let mut text = String::new();
    let top = err.to_string();
    let top = match err.url() {
        Some(url) => top
            .replace(&format!(" for url ({url})"), "")
            .replace(url.as_str(), "<url>"),
        None => top,
    };
    text.push_str(&top);
    let mut source = err.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // hyper and reqwest sometimes repeat the same message one level down.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `Retry-After` from `headers`, relative to `now`. See [`parse_retry_after`].
pub(crate) fn retry_after(headers: &HeaderMap, now: DateTime<Utc>) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, now)
}

/// Parses a `Retry-After` value (RFC 9110 §10.2.3): delta-seconds (`120`) or an
/// HTTP-date (`Wed, 21 Oct 2015 07:28:00 GMT`, or the obsolete RFC 850 and
/// asctime forms), giving how long from `now` to wait. A date in the past gives
/// zero; anything unparseable gives `None`; the result is capped at
/// [`MAX_RETRY_AFTER`].
pub(crate) fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: delta-seconds, however many (too many to fit is "long").
        let seconds = value.parse::<u64>().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER));
    }
    let at = parse_http_date(value)?;
    let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
    Some(wait.min(MAX_RETRY_AFTER))
}

fn parse_http_date(value: &str) -> Option<DateTime<Utc>> {
    const FORMATS: [&str; 3] = [
        // IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT
        "%a, %d %b %Y %H:%M:%S GMT",
        // RFC 850: Sunday, 06-Nov-94 08:49:37 GMT
        "%A, %d-%b-%y %H:%M:%S GMT",
        // asctime: Sun Nov  6 08:49:37 1994
        "%a %b %e %H:%M:%S %Y",
    ];
    FORMATS.iter().find_map(|format| {
        NaiveDateTime::parse_from_str(value, format)
            .ok()
            .map(|naive| naive.and_utc())
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0)
            .single()
            .expect("valid date")
    }

    #[test]
    fn retry_after_delta_seconds() {
        assert_eq!(
            parse_retry_after("120", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now()), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("7200", now()),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999999", now()),
            Some(MAX_RETRY_AFTER)
        );
    }

    #[test]
    fn retry_after_http_dates() {
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now()),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wednesday, 21-Oct-15 07:28:30 GMT", now()),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed Oct 21 07:28:05 2015", now()),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            parse_retry_after("Thu Oct  1 07:28:05 2015", now()),
            Some(Duration::ZERO),
            "space-padded asctime day, in the past"
        );
        // In the past: no wait.
        assert_eq!(
            parse_retry_after("Tue, 20 Oct 2015 07:28:00 GMT", now()),
            Some(Duration::ZERO)
        );
        // Future: the whole wait, however long (a day here).
        assert_eq!(
            parse_retry_after("Thu, 22 Oct 2015 07:28:00 GMT", now()),
            Some(Duration::from_secs(86400))
        );
    }

    #[test]
    fn retry_after_garbage() {
        for value in [
            "",
            "  ",
            "soon",
            "-5",
            "1.5",
            "12s",
            "+3",
            "Wed, 21 Oct 2015 07:30:00 PST",
            "Wed, 32 Oct 2015 07:30:00 GMT",
            "2015-10-21T07:30:00Z",
        ] {
            assert_eq!(parse_retry_after(value, now()), None, "{value:?}");
        }
    }

    #[test]
    fn retry_after_header() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers, now()), None);
        headers.insert(reqwest::header::RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(retry_after(&headers, now()), Some(Duration::from_secs(3)));
    }

    #[test]
    fn truncates_on_characters() {
        assert_eq!(truncate("abc", 3), "abc");
        assert_eq!(truncate("abcd", 3), "ab…");
        assert_eq!(truncate("ééééé", 4), "ééé…");
        assert_eq!(truncate(&"x".repeat(600), 500).chars().count(), 500);
    }

    #[test]
    fn statuses() {
        assert!(is_retryable_status(StatusCode::TOO_MANY_REQUESTS));
        assert!(is_retryable_status(StatusCode::SERVICE_UNAVAILABLE));
        assert!(!is_retryable_status(StatusCode::BAD_REQUEST));
        assert!(!is_retryable_status(StatusCode::FOUND));
        assert_eq!(status_code(StatusCode::BAD_GATEWAY), "http_502");
        assert_eq!(reason(StatusCode::NOT_FOUND), "Not Found");
    }
}
