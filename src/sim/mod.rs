//! A simulator of the Finovy "my image list" API, for `--demo`, the tests and the
//! `finovy-api-sim` binary.
//!
//! It implements the contract of the API document: `GET` with the
//! `Finovy-Access-Token` header, the `imageName`, `imageType`, `datacenterKey` and
//! `status` filters, `page`/`pageSize` paging, the success envelope, and
//! authentication failures either as HTTP 401 or as HTTP 200 with `"code":401`.
//! [`Faults`] make it misbehave the way real servers do. A control API under
//! `/_sim/` reads and replaces the images and the faults and lists the requests
//! received, so tests can drive it from outside the process.

mod data;
mod server;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub use data::{generate, GenerateOptions, SimImage};
pub use server::SimServer;

/// How an authentication failure is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthStyle {
    /// HTTP 401 with the error envelope.
    #[default]
    Http,
    /// HTTP 200 with `"code":401` in the envelope.
    Body,
}

/// Ways the simulator misbehaves; all off by default.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Serve at most this many items per page, whatever `pageSize` asks.
    pub page_cap: Option<usize>,
    /// Repeat the last `overlap` items of the previous page at the start of each
    /// page after the first (as when items shift while a client pages).
    pub overlap: usize,
    /// Refuse every token, in this style.
    pub reject_token: Option<AuthStyle>,
}

/// One request the simulator received.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedRequest {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string, undecoded.
    pub query: String,
    /// Headers, names lower-case.
    pub headers: Vec<(String, String)>,
}

/// Options fixed at start.
#[derive(Debug, Clone, Default)]
pub struct SimOptions {
    /// The token to require; `None` accepts any non-empty token.
    pub token: Option<String>,
    /// How a wrong token is answered.
    pub auth_style: AuthStyle,
}

const MAX_RECORDED: usize = 1000;

#[derive(Debug)]
struct SimState {
    images: Arc<Vec<SimImage>>,
    faults: Faults,
    requests: VecDeque<RecordedRequest>,
}

/// The simulated upstream: images, faults and options, shared with its server.
#[derive(Debug, Clone)]
pub struct Simulator {
    options: Arc<SimOptions>,
    state: Arc<Mutex<SimState>>,
}

impl Simulator {
    /// A simulator serving `images`.
    pub fn new(images: Vec<SimImage>, options: SimOptions) -> Self {
        Simulator {
            options: Arc::new(options),
            state: Arc::new(Mutex::new(SimState {
                images: Arc::new(images),
                faults: Faults::default(),
                requests: VecDeque::new(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The images served now.
    pub fn images(&self) -> Arc<Vec<SimImage>> {
        Arc::clone(&self.lock().images)
    }

    /// Replaces the images.
    pub fn set_images(&self, images: Vec<SimImage>) {
        self.lock().images = Arc::new(images);
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// Replaces the faults.
    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// The last requests received (at most 1000), oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.lock().requests.iter().cloned().collect()
    }

    fn record(&self, request: RecordedRequest) {
        let mut state = self.lock();
        if state.requests.len() == MAX_RECORDED {
            state.requests.pop_front();
        }
        state.requests.push_back(request);
    }
}
