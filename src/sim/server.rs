//! The simulator's HTTP side: the list endpoint, its faults, and the `/_sim/`
//! control API.

use std::convert::Infallible;
use std::fmt::Write as _;
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
use serde_json::{json, Value};
use tokio::net::TcpListener;

use super::{
    AuthStyle, Corruption, FaultAction, Faults, Plan, RecordedRequest, SimImage, Simulator,
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

fn json_response(status: StatusCode, body: &Value) -> Response<SimBody> {
    response(status, "application/json", body.to_string())
}

fn response(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<SimBody> {
    Response::builder()
        .status(status)
        .header(CONTENT_TYPE, content_type)
        .body(SimBody::whole(body))
        .expect("static response parts are valid")
}

/// The query parameters the list endpoint reads.
struct ListQuery {
    page: u32,
    page_size: usize,
    filters: Vec<(String, String)>,
}

impl ListQuery {
    fn parse(query: &str) -> Self {
        let mut q = ListQuery {
            page: 1,
            page_size: 20,
            filters: Vec::new(),
        };
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "page" => q.page = v.parse().unwrap_or(1),
                "pageSize" => q.page_size = v.parse().unwrap_or(20),
                "datacenterKey" | "imageType" | "imageName" | "status" => {
                    q.filters.push((k.into_owned(), v.into_owned()))
                }
                _ => {}
            }
        }
        q.page = q.page.max(1);
        q
    }

    fn datacenter(&self) -> Option<&str> {
        self.filters
            .iter()
            .find(|(k, _)| k == "datacenterKey")
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, im: &SimImage) -> bool {
        self.filters.iter().all(|(k, v)| match k.as_str() {
            "datacenterKey" => &im.datacenter_key == v,
            "imageType" => &im.image_type == v,
            "imageName" => im.image_name.contains(v.as_str()),
            "status" => im.status.to_string() == *v,
            _ => true,
        })
    }
}

async fn handle(sim: &Simulator, req: Request<Incoming>) -> Response<SimBody> {
    let arrived = tokio::time::Instant::now();
    let path = req.uri().path().to_string();
    if let Some(control) = path.strip_prefix("/_sim/") {
        return control_api(sim, control.to_string(), req).await;
    }
    let query = ListQuery::parse(req.uri().query().unwrap_or(""));
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
    };
    let plan = sim.admit(recorded, query.datacenter(), query.page);
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": 405, "success": false, "msg": "GET only"}),
        );
    }
    // The latency runs from the request's arrival, and the answer is built
    // meanwhile: a request takes the latency, not the latency plus the time it
    // takes to write the page.
    let deadline = arrived + plan.delay;
    if let Some(FaultAction::Hang) = &plan.replace {
        tokio::time::sleep_until(deadline).await;
        tokio::time::sleep(HANG).await;
        return json_response(StatusCode::GATEWAY_TIMEOUT, &json!({"msg": "hung"}));
    }
    let response = answer(sim, &plan, &query, &req);
    tokio::time::sleep_until(deadline).await;
    sim.note_held(arrived.elapsed());
    response
}

/// The answer to a list request, as the plan bends it.
fn answer(
    sim: &Simulator,
    plan: &Plan,
    query: &ListQuery,
    req: &Request<Incoming>,
) -> Response<SimBody> {
    // Faults in front of the application (a gateway, a proxy) answer before the
    // token is even looked at.
    match &plan.replace {
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
    let token = req
        .headers()
        .get("finovy-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token_ok = !token.is_empty() && sim.options.token.as_deref().is_none_or(|t| t == token);
    if let Some(style) = plan
        .reject_token
        .or((!token_ok).then_some(sim.options.auth_style))
    {
        return auth_failure(style);
    }
    list(sim, plan, query)
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

/// The list endpoint: filters, then the requested page, bent and framed as the
/// plan says.
fn list(sim: &Simulator, plan: &Plan, query: &ListQuery) -> Response<SimBody> {
    let per_page = plan
        .page_cap
        .map_or(query.page_size, |cap| query.page_size.min(cap))
        .max(1);
    let matches = sim.matching(&plan.images, &query.filters, |im| query.matches(im));
    let len = matches.positions.len();
    let page = query.page as usize;
    let mut start = (page - 1).saturating_mul(per_page);
    if page > 1 {
        start = start.saturating_add(plan.skip);
    }
    if plan.clamp && start >= len && len > 0 {
        start = (len - 1) / per_page * per_page;
    }
    let start = start.min(len);
    let end = start.saturating_add(per_page).min(len);
    let from = if page > 1 {
        start.saturating_sub(plan.repeat)
    } else {
        start
    };
    let total = (len as i64).saturating_add(plan.total_offset).max(0);
    // The page is written into one buffer, sized for the usual item.
    let mut page_body = String::with_capacity(160 + 256 * end.saturating_sub(from));
    let _ = write!(
        page_body,
        r#"{{"code":0,"success":true,"msg":"success","traceId":"{}","data":{{"totalCounts":{total},"data":["#,
        trace_id()
    );
    if start < end {
        match plan.corrupt {
            // The usual page: a slice of the matching images, written once. The
            // benchmark pages through a million images on the machine it measures
            // the exporter on, and the simulator must take as little of it as it can.
            None => page_body.push_str(matches.written(&plan.images, from, end)),
            Some(_) => {
                for (n, &i) in matches.positions[from..end].iter().enumerate() {
                    if n > 0 {
                        page_body.push(',');
                    }
                    write_item(&mut page_body, &plan.images[i as usize], plan.corrupt);
                }
            }
        }
    }
    const TAIL: &str = "]}}";
    let mut builder = Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "application/json");
    let body = match &plan.replace {
        Some(FaultAction::CloseMidBody) => {
            let full = page_body + TAIL;
            builder = builder.header(CONTENT_LENGTH, full.len());
            // A short pause first, so that the headers and the half body are
            // flushed before the connection closes.
            SimBody(BodyKind::Cut(
                Some(half(full)),
                Box::pin(tokio::time::sleep(Duration::from_millis(50))),
            ))
        }
        Some(FaultAction::StallMidBody) => {
            let full = page_body + TAIL;
            builder = builder.header(CONTENT_LENGTH, full.len());
            SimBody(BodyKind::Cut(
                Some(half(full)),
                Box::pin(tokio::time::sleep(HANG)),
            ))
        }
        Some(FaultAction::Truncated) => SimBody::whole(half(page_body + TAIL)),
        Some(FaultAction::Oversized { bytes }) => {
            let mut body = page_body;
            let mut n = 0u64;
            while body.len() + TAIL.len() < *bytes {
                if !body.ends_with('[') {
                    body.push(',');
                }
                body.push_str(&filler_item(n));
                n += 1;
            }
            body.push_str(TAIL);
            SimBody::whole(body)
        }
        Some(FaultAction::Endless) => {
            let mut head = page_body;
            if !head.ends_with('[') {
                head.push(',');
            }
            let mut chunk = String::with_capacity(ENDLESS_CHUNK + 512);
            let mut n = 0u64;
            while chunk.len() < ENDLESS_CHUNK {
                chunk.push_str(&filler_item(n));
                chunk.push(',');
                n += 1;
            }
            SimBody(BodyKind::Endless(Some(head.into()), chunk.into()))
        }
        _ => SimBody::whole(page_body + TAIL),
    };
    builder.body(body).expect("static response parts are valid")
}

fn half(text: String) -> Bytes {
    let mut bytes = Bytes::from(text);
    bytes.truncate(bytes.len() / 2);
    bytes
}

/// One item as the server sends it, bent when the plan corrupts it.
fn write_item(out: &mut String, im: &SimImage, corrupt: Option<(i64, Corruption)>) {
    let how = corrupt
        .and_then(|(every, how)| (every > 0 && im.image_id.rem_euclid(every) == 0).then_some(how));
    let value = match how {
        None => return write_plain_item(out, im),
        Some(Corruption::WrongType) => json!({
            "id": {"value": im.id},
            "imageId": im.image_id,
            "imageType": 7,
            "imageName": im.image_name,
            "imageSize": true,
            "datacenterKey": [im.datacenter_key],
            "status": "x",
            "createTime": "yesterday",
        }),
        Some(Corruption::Missing) => json!({
            "imageId": im.image_id,
            "imageName": im.image_name,
        }),
        Some(Corruption::Loose) => json!({
            "id": im.id,
            "imageId": im.image_id.to_string(),
            "imageType": im.image_type,
            "imageName": im.image_name,
            "imageSize": im.image_size.parse::<f64>().map_or(Value::Null, |v| json!(v)),
            "datacenterKey": im.datacenter_key,
            "status": im.status.to_string(),
            "createTime": im.create_time.to_string(),
        }),
    };
    let _ = write!(out, "{value}");
}

/// An image as serde would write it (the same bytes, which a test checks),
/// without going through serde for every field.
pub(super) fn write_plain_item(out: &mut String, im: &SimImage) {
    out.push_str(r#"{"id":"#);
    push_json_str(out, &im.id);
    let _ = write!(out, r#","imageId":{},"imageType":"#, im.image_id);
    push_json_str(out, &im.image_type);
    out.push_str(r#","imageName":"#);
    push_json_str(out, &im.image_name);
    out.push_str(r#","imageSize":"#);
    push_json_str(out, &im.image_size);
    out.push_str(r#","datacenterKey":"#);
    push_json_str(out, &im.datacenter_key);
    let _ = write!(
        out,
        r#","status":{},"createTime":{}}}"#,
        im.status, im.create_time
    );
}

/// A JSON string: as it is when nothing in it needs escaping, through
/// serde_json otherwise.
fn push_json_str(out: &mut String, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else {
        out.push_str(&Value::from(s).to_string());
    }
}

/// A made-up item, to pad an oversized or endless answer (formatted directly:
/// there may be hundreds of thousands).
fn filler_item(n: u64) -> String {
    format!(
        r#"{{"id":"pad{n}","imageId":{n},"imageType":"Padding","imageName":"padding-{n}","imageSize":"1.00","datacenterKey":"PAD","status":1,"createTime":0}}"#
    )
}

async fn control_api(sim: &Simulator, what: String, req: Request<Incoming>) -> Response<SimBody> {
    let method = req.method().clone();
    let body = match Limited::new(req.into_body(), CONTROL_BODY_LIMIT)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()})),
    };
    let bad = |e: serde_json::Error| {
        json_response(StatusCode::BAD_REQUEST, &json!({"error": e.to_string()}))
    };
    match (method, what.as_str()) {
        (Method::GET, "images") => json_response(StatusCode::OK, &json!(*sim.images())),
        (Method::GET, "held") => {
            let (answers, total_us) = sim.held();
            json_response(
                StatusCode::OK,
                &json!({"answers": answers, "total_us": total_us}),
            )
        }
        (Method::PUT, "images") => match serde_json::from_slice::<Vec<SimImage>>(&body) {
            Ok(images) => {
                sim.set_images(images);
                json_response(StatusCode::OK, &json!({"images": sim.images().len()}))
            }
            Err(e) => bad(e),
        },
        (Method::POST, "images") => match serde_json::from_slice::<Vec<SimImage>>(&body) {
            Ok(more) => {
                let mut images = (*sim.images()).clone();
                images.extend(more);
                sim.set_images(images);
                json_response(StatusCode::OK, &json!({"images": sim.images().len()}))
            }
            Err(e) => bad(e),
        },
        (Method::GET, "alternates") => {
            let alternates = sim.alternates();
            let sets: Vec<&Vec<SimImage>> = alternates.iter().map(|s| &**s).collect();
            json_response(StatusCode::OK, &json!(sets))
        }
        (Method::PUT, "alternates") => match serde_json::from_slice::<Vec<Vec<SimImage>>>(&body) {
            Ok(sets) => {
                sim.set_alternates(sets);
                json_response(StatusCode::OK, &json!({"sets": sim.alternates().len()}))
            }
            Err(e) => bad(e),
        },
        (Method::POST, "evolve") => {
            let change = sim.evolve(super::data::now_ms());
            json_response(StatusCode::OK, &json!(change))
        }
        (Method::GET, "faults") => json_response(StatusCode::OK, &json!(sim.faults())),
        (Method::PUT, "faults") => match serde_json::from_slice::<Faults>(&body) {
            Ok(faults) => {
                sim.set_faults(faults);
                json_response(StatusCode::OK, &json!(sim.faults()))
            }
            Err(e) => bad(e),
        },
        (Method::GET, "requests") => json_response(StatusCode::OK, &json!(sim.requests())),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_items_are_written_as_serde_writes_them() {
        let mut images = super::super::generate(&super::super::GenerateOptions {
            images: 300,
            ..Default::default()
        });
        let odd = [
            "",
            "quote\"inside",
            "back\\slash",
            "tab\tand\nnewline",
            "\u{1}\u{1f}",
            "中文镜像",
            "emoji 🚀 / slash",
            "\u{7f}\u{2028}",
        ];
        for (n, s) in odd.iter().enumerate() {
            let mut im = images[n].clone();
            im.id = s.to_string();
            im.image_type = s.to_string();
            im.image_name = s.to_string();
            im.image_size = s.to_string();
            im.datacenter_key = s.to_string();
            im.image_id = -(n as i64);
            im.create_time = i64::MIN + n as i64;
            images.push(im);
        }
        for im in &images {
            let mut written = String::new();
            write_item(&mut written, im, None);
            assert_eq!(written, serde_json::to_string(im).unwrap());
        }
    }
}
