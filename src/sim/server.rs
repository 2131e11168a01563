//! The simulator's HTTP side: the list endpoint, its faults, and the `/_sim/`
//! control API.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::page::{self, ListQuery};
use super::{
    AccountError, AuthStyle, FaultAction, Faults, Plan, RecordedRequest, SimImage, Simulator,
};

const CONTROL_BODY_LIMIT: usize = 256 << 20;
/// How long a hang lasts: longer than any sane client timeout, short enough that
/// a long-running simulator does not keep hung connections for ever.
const HANG: Duration = Duration::from_secs(3600);
/// Size of one chunk of an endless answer.
const ENDLESS_CHUNK: usize = 64 << 10;

/// A bound simulator server: [`SimServer::local_addr`] is known before it serves.
pub struct SimServer {
    listener: TcpListener,
    sim: Simulator,
}

impl SimServer {
    /// Binds `addr` (port 0 picks a free port).
    pub async fn bind(addr: SocketAddr, sim: Simulator) -> std::io::Result<Self> {
        Ok(SimServer {
            listener: TcpListener::bind(addr).await?,
            sim,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The simulator this server answers from (a handle sharing its state).
    pub fn simulator(&self) -> Simulator {
        self.sim.clone()
    }

    /// Serves until `shutdown` completes, then lets open requests finish
    /// (at most 5 seconds: hung answers are cut).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => break,
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(_) => continue,
                },
            };
            // Small answers must not wait for a delayed ACK (Nagle).
            let _ = stream.set_nodelay(true);
            let sim = self.sim.clone();
            let service = service_fn(move |req| {
                let sim = sim.clone();
                async move { Ok::<_, Infallible>(handle(&sim, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
        drop(self.listener);
        let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
    }
}

/// An answer body: whole, or misbehaving on the wire.
pub struct SimBody(BodyKind);

enum BodyKind {
    Whole(Option<Bytes>),
    /// Sends the bytes, then nothing until the timer fires, then fails, which
    /// makes hyper close the connection.
    Cut(Option<Bytes>, Pin<Box<tokio::time::Sleep>>),
    /// Sends the head, then the chunk again and again.
    Endless(Option<Bytes>, Bytes),
}

impl SimBody {
    fn whole(bytes: impl Into<Bytes>) -> Self {
        SimBody(BodyKind::Whole(Some(bytes.into())))
    }
}

impl Body for SimBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let cut = || std::io::Error::new(std::io::ErrorKind::ConnectionAborted, "fault: cut");
        match &mut self.get_mut().0 {
            BodyKind::Whole(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            BodyKind::Cut(head, timer) => match head.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => timer.as_mut().poll(cx).map(|()| Some(Err(cut()))),
            },
            BodyKind::Endless(head, chunk) => Poll::Ready(Some(Ok(Frame::data(
                head.take().unwrap_or_else(|| chunk.clone()),
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.0, BodyKind::Whole(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            BodyKind::Whole(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            _ => SizeHint::default(),
        }
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<SimBody> {
    let body = serde_json::to_vec(body).expect("control and error bodies serialize");
    response(status, "application/json", body)
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<SimBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(SimBody::whole(body))
        .expect("static response parts are valid")
}

async fn handle(sim: &Simulator, req: Request<Incoming>) -> Response<SimBody> {
    let arrived = tokio::time::Instant::now();
    let path = req.uri().path().to_string();
    if let Some(control) = path.strip_prefix("/_sim/") {
        return control_api(sim, control.to_string(), req).await;
    }
    if path.ends_with("/auth/getToken") {
        return login(sim, req).await;
    }
    let query = ListQuery::parse(req.uri().query().unwrap_or(""));
    let token = req
        .headers()
        .get("finovy-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let recorded = RecordedRequest {
        method: req.method().to_string(),
        path: path.clone(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        received_us: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64),
        faults: Vec::new(),
        account: None,
    };
    let plan = sim.admit(recorded, token, query.datacenter(), query.page);
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": 405, "success": false, "msg": "GET only"}),
        );
    }
    // The latency runs from the request's arrival, and the answer is built
    // meanwhile: a request takes the latency, not the latency plus the time it
    // takes to write the page.
    let deadline = arrived + plan.effects.delay;
    if let Some(FaultAction::Hang) = &plan.effects.replace {
        tokio::time::sleep_until(deadline).await;
        tokio::time::sleep(HANG).await;
        return json_response(StatusCode::GATEWAY_TIMEOUT, &json!({"msg": "hung"}));
    }
    let response = match &plan.effects.replace {
        Some(FaultAction::EchoToken { spelling, place }) => {
            let (status, content_type, body) = super::faults::echo(token, *spelling, *place);
            response(
                StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                content_type,
                body,
            )
        }
        _ => answer(sim, &plan, &query),
    };
    tokio::time::sleep_until(deadline).await;
    sim.note_held(arrived.elapsed());
    response
}

/// The answer to a list request, as the plan bends it.
fn answer(sim: &Simulator, plan: &Plan, query: &ListQuery) -> Response<SimBody> {
    let effects = &plan.effects;
    // Faults in front of the application (a gateway, a proxy) answer before the
    // token is even looked at.
    match &effects.replace {
        Some(FaultAction::Status {
            status,
            retry_after_secs,
        }) => {
            let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = json_response(
                status,
                &json!({"code": status.as_u16(), "success": false, "msg": status.canonical_reason().unwrap_or("error")}),
            );
            if let Some(secs) = retry_after_secs {
                resp.headers_mut().insert(RETRY_AFTER, (*secs).into());
            }
            return resp;
        }
        Some(FaultAction::Malformed) => {
            return response(
                StatusCode::OK,
                "text/html",
                "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1></body></html>\n",
            );
        }
        Some(FaultAction::Unauthorized { style }) => return auth_failure(*style),
        Some(FaultAction::ApiError { code, msg }) => {
            let msg = if msg.is_empty() { "系统异常" } else { msg };
            return json_response(
                StatusCode::OK,
                &json!({"code": code, "success": false, "data": null, "msg": msg, "traceId": trace_id()}),
            );
        }
        _ => {}
    }
    let inventory = match (&plan.inventory, effects.reject_token) {
        (Some(inventory), None) => inventory,
        (_, Some(style)) => return auth_failure(style),
        (None, None) => return auth_failure(sim.auth_style),
    };
    let body = page::write(inventory, query, effects, &trace_id());
    frame(body, effects.replace.as_ref())
}

/// `POST …/auth/getToken`: the envelope of [`Simulator::login`], refusals in the
/// simulator's [`AuthStyle`].
async fn login(sim: &Simulator, req: Request<Incoming>) -> Response<SimBody> {
    if req.method() != Method::POST {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": 405, "success": false, "msg": "POST only"}),
        );
    }
    let body = match Limited::new(req.into_body(), 64 << 10).collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => {
            return json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &json!({"code": 413, "success": false, "msg": "body too large"}),
            )
        }
    };
    let (answer, refused) = sim.login(&body, &trace_id());
    let status = match (refused, sim.auth_style) {
        (true, AuthStyle::Http) => StatusCode::UNAUTHORIZED,
        _ => StatusCode::OK,
    };
    json_response(status, &answer)
}

fn auth_failure(style: AuthStyle) -> Response<SimBody> {
    let body = json!({"code": 401, "success": false, "data": null, "msg": "身份认证失败", "traceId": trace_id()});
    let status = match style {
        AuthStyle::Http => StatusCode::UNAUTHORIZED,
        AuthStyle::Body => StatusCode::OK,
    };
    json_response(status, &body)
}

fn trace_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{:032x}", nanos ^ 0x5eed_0000_0000_0000_0000_0000_0000_0000)
}

/// A successful list answer carrying `body`, misbehaving on the wire as the
/// fault that replaces the answer says.
fn frame(body: Vec<u8>, fault: Option<&FaultAction>) -> Response<SimBody> {
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json");
    let body = match fault {
        Some(FaultAction::CloseMidBody) => {
            builder = builder.header(CONTENT_LENGTH, body.len());
            // A short pause first, so that the headers and the half body are
            // flushed before the connection closes.
            SimBody(BodyKind::Cut(
                Some(half(body)),
                Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            ))
        }
        Some(FaultAction::StallMidBody) => {
            builder = builder.header(CONTENT_LENGTH, body.len());
            SimBody(BodyKind::Cut(
                Some(half(body)),
                Box::pin(tokio::time::sleep(HANG)),
            ))
        }
        Some(FaultAction::Truncated) => SimBody::whole(half(body)),
        Some(FaultAction::Oversized { bytes }) => {
            let (mut head, tail) = open_array(body);
            let mut n = 0u64;
            while head.len() + tail.len() < *bytes {
                open_item(&mut head);
                page::push_filler(&mut head, n);
                n += 1;
            }
            head.extend_from_slice(tail);
            SimBody::whole(head)
        }
        Some(FaultAction::Endless) => {
            let (mut head, _) = open_array(body);
            open_item(&mut head);
            page::push_filler(&mut head, 0);
            let mut chunk = Vec::with_capacity(ENDLESS_CHUNK + 512);
            let mut n = 1u64;
            while chunk.len() < ENDLESS_CHUNK {
                chunk.push(b',');
                page::push_filler(&mut chunk, n);
                n += 1;
            }
            SimBody(BodyKind::Endless(Some(head.into()), chunk.into()))
        }
        _ => SimBody::whole(body),
    };
    builder.body(body).expect("static response parts are valid")
}

/// The end of a page whose item array comes last (as serde writes it, unless
/// a fault took the array away).
const PAGE_TAIL: &[u8] = b"]}}";

/// A page cut where more items could follow its last one, and what closes it.
fn open_array(mut body: Vec<u8>) -> (Vec<u8>, &'static [u8]) {
    match body.ends_with(PAGE_TAIL) {
        true => {
            body.truncate(body.len() - PAGE_TAIL.len());
            (body, PAGE_TAIL)
        }
        false => (body, b""),
    }
}

/// Makes room for one more item in an open array: a comma, unless it is the first.
fn open_item(array: &mut Vec<u8>) {
    if array.last() != Some(&b'[') {
        array.push(b',');
    }
}

fn half(body: Vec<u8>) -> Bytes {
    let mut bytes = Bytes::from(body);
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// The `/_sim/` control API. `images` reads and changes the first account,
/// or the one named by `?account=NAME`.
async fn control_api(sim: &Simulator, what: String, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let account = url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "account")
        .map(|(_, v)| v.into_owned());
    let body = match Limited::new(req.into_body(), CONTROL_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    let bad = |e: &dyn std::fmt::Display| {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))
    };
    let account = account.unwrap_or_else(|| sim.accounts().swap_remove(0));
    match (method, what.as_str()) {
        (Method::GET, "accounts") => {
            let accounts: Vec<Value> = sim
                .accounts()
                .into_iter()
                .map(|name| {
                    let images = sim.account_images(&name).map_or(0, |im| im.len());
                    json!({"name": name, "images": images})
                })
                .collect();
            json_response(StatusCode::OK, &accounts)
        }
        (Method::GET, "images") => match sim.account_images(&account) {
            Ok(images) => json_response(StatusCode::OK, &*images),
            Err(e) => not_found(&e),
        },
        (Method::GET, "held") => {
            let (answers, total_us) = sim.held();
            json_response(
                StatusCode::OK,
                &json!({"answers": answers, "total_us": total_us}),
            )
        }
        (method @ (Method::PUT | Method::POST), "images") => {
            let mut images = match serde_json::from_slice::<Vec<SimImage>>(&body) {
                Ok(images) => images,
                Err(e) => return bad(&e),
            };
            let before = match sim.account_images(&account) {
                Ok(before) => before,
                Err(e) => return not_found(&e),
            };
            if method == Method::POST {
                images.splice(0..0, before.iter().cloned());
            }
            let count = images.len();
            match sim.set_account_images(&account, images) {
                Ok(()) => json_response(StatusCode::OK, &json!({"images": count})),
                Err(e) => not_found(&e),
            }
        }
        (Method::GET, "alternates") => {
            let alternates = sim.alternates();
            let sets: Vec<&Vec<SimImage>> = alternates.iter().map(|s| &**s).collect();
            json_response(StatusCode::OK, &sets)
        }
        (Method::PUT, "alternates") => match serde_json::from_slice::<Vec<Vec<SimImage>>>(&body) {
            Ok(sets) => {
                sim.set_alternates(sets);
                json_response(StatusCode::OK, &json!({"sets": sim.alternates().len()}))
            }
            Err(e) => bad(&e),
        },
        (Method::POST, "evolve") => {
            let change = sim.evolve(super::data::now_ms());
            json_response(StatusCode::OK, &change)
        }
        (Method::GET, "faults") => json_response(StatusCode::OK, &sim.faults()),
        (Method::PUT, "faults") => match serde_json::from_slice::<Faults>(&body) {
            Ok(faults) => {
                sim.set_faults(faults);
                json_response(StatusCode::OK, &sim.faults())
            }
            Err(e) => bad(&e),
        },
        (Method::POST, "revoke") => {
            sim.revoke_tokens();
            json_response(StatusCode::OK, &json!({"revoked": true}))
        }
        (Method::POST, "fail-logins") => match serde_json::from_slice::<Vec<i64>>(&body) {
            Ok(codes) => {
                sim.fail_next_logins(&codes);
                json_response(StatusCode::OK, &json!({"codes": codes}))
            }
            Err(e) => bad(&e),
        },
        (Method::GET, "logins") => json_response(
            StatusCode::OK,
            &json!({"attempts": sim.login_attempts(), "successes": sim.logins()}),
        ),
        (Method::GET, "requests") => json_response(StatusCode::OK, &sim.requests()),
        (Method::GET, "counts") => {
            let counts: Vec<Value> = sim
                .request_counts()
                .into_iter()
                .map(|((account, datacenter), requests)| {
                    json!({"account": account, "datacenter": datacenter, "requests": requests})
                })
                .collect();
            json_response(StatusCode::OK, &counts)
        }
        (Method::DELETE, "requests") => {
            sim.clear_requests();
            json_response(StatusCode::OK, &json!({"requests": 0}))
        }
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown control endpoint"}),
        ),
    }
}

fn not_found(e: &AccountError) -> Response<SimBody> {
    json_response(StatusCode::NOT_FOUND, &json!({"error": e.to_string()}))
}
