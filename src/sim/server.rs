//! The simulator's HTTP side: the list endpoint and the `/_sim/` control API.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;

use super::{AuthStyle, Faults, RecordedRequest, SimImage, Simulator};

const CONTROL_BODY_LIMIT: usize = 256 << 20;

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

    /// Serves until `shutdown` completes, then lets open requests finish.
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
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("static response parts are valid")
}

async fn handle(sim: &Simulator, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    if let Some(control) = path.strip_prefix("/_sim/") {
        return control_api(sim, control.to_string(), req).await;
    }
    sim.record(RecordedRequest {
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
    });
    if req.method() != Method::GET {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"code": 405, "success": false, "msg": "GET only"}),
        );
    }
    let faults = sim.faults();
    let token = req
        .headers()
        .get("finovy-access-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let token_ok = !token.is_empty() && sim.options.token.as_deref().is_none_or(|t| t == token);
    if let Some(style) = faults
        .reject_token
        .or((!token_ok).then_some(sim.options.auth_style))
    {
        return auth_failure(style);
    }
    list(sim, &faults, req.uri().query().unwrap_or(""))
}

fn auth_failure(style: AuthStyle) -> Response<Full<Bytes>> {
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

/// The list endpoint: filters, then the requested page.
fn list(sim: &Simulator, faults: &Faults, query: &str) -> Response<Full<Bytes>> {
    let mut page = 1usize;
    let mut page_size = 20usize;
    let mut filters: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "page" => page = v.parse().unwrap_or(1),
            "pageSize" => page_size = v.parse().unwrap_or(20),
            "datacenterKey" | "imageType" | "imageName" | "status" => {
                filters.push((k.into_owned(), v.into_owned()))
            }
            _ => {}
        }
    }
    let page = page.max(1);
    let per_page = faults
        .page_cap
        .map_or(page_size, |cap| page_size.min(cap))
        .max(1);
    let images = sim.images();
    let matching: Vec<&SimImage> = images
        .iter()
        .filter(|im| {
            filters.iter().all(|(k, v)| match k.as_str() {
                "datacenterKey" => &im.datacenter_key == v,
                "imageType" => &im.image_type == v,
                "imageName" => im.image_name.contains(v.as_str()),
                "status" => im.status.to_string() == *v,
                _ => true,
            })
        })
        .collect();
    let start = ((page - 1) * per_page).min(matching.len());
    let end = (start + per_page).min(matching.len());
    let from = if page > 1 {
        start.saturating_sub(faults.overlap)
    } else {
        start
    };
    let items: Vec<&SimImage> = if start < end {
        matching[from..end].to_vec()
    } else {
        Vec::new()
    };
    let body = json!({
        "code": 0,
        "success": true,
        "data": {"data": items, "totalCounts": matching.len()},
        "msg": "success",
        "traceId": trace_id(),
    });
    json_response(StatusCode::OK, &body)
}

async fn control_api(
    sim: &Simulator,
    what: String,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
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
        (Method::GET, "faults") => json_response(StatusCode::OK, &json!(sim.faults())),
        (Method::PUT, "faults") => match serde_json::from_slice::<Faults>(&body) {
            Ok(faults) => {
                sim.set_faults(faults);
                json_response(StatusCode::OK, &json!(sim.faults()))
            }
            Err(e) => bad(e),
        },
        (Method::GET, "requests") => json_response(StatusCode::OK, &json!(sim.requests())),
        _ => json_response(
            StatusCode::NOT_FOUND,
            &json!({"error": "unknown control endpoint"}),
        ),
    }
}
