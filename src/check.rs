//! `finovy-image-exporter check`: does this set-up work, in one command?
//!
//! It takes the daemon's flags, or `--config.file`, and does what the first pass
//! of every target would do, once: it validates the configuration, logs in where
//! an account has credentials, and asks page 1 of every target (the discovery
//! pass's page 1 for an account without datacenters). It prints one line per
//! target, `ok` with the images the upstream reports, or `failed` with the
//! reason and the hint the log would give, and exits 0 when every target
//! answered, 1 when some failed upstream, 2 when the configuration is invalid.
//! It starts no server and writes nothing: `--config.check` is the offline
//! check of the file alone.

use std::sync::Arc;

use crate::account::{Account, TargetKey};
use crate::config::Config;
use crate::telemetry::Telemetry;
use crate::upstream::{ApiClient, Budget, ClientError, FetchError};

/// Targets asked at once: enough that a set-up of many accounts is checked in
/// seconds, few enough not to look like a flood to the upstream.
const AT_ONCE: usize = 8;

/// What one target answered.
#[derive(Debug)]
pub struct Outcome {
    /// The target.
    pub key: TargetKey,
    /// `totalCounts` of page 1, or why it failed (with its hint).
    pub result: Result<u64, (FetchError, Option<&'static str>)>,
}

impl Outcome {
    /// The line printed for it.
    pub fn line(&self) -> String {
        let target = match &self.key.datacenter {
            Some(dc) => format!("{}/{dc}", self.key.account),
            None => format!("{} (every datacenter)", self.key.account),
        };
        match &self.result {
            Ok(images) => format!("ok      {target}: {images} images"),
            Err((err, hint)) => {
                let mut line = format!("failed  {target}: {}: {err}", err.reason().label());
                if let Some(hint) = hint {
                    line.push_str("; hint: ");
                    line.push_str(hint);
                }
                line
            }
        }
    }
}

/// Checks the set-up the flags describe and returns the exit status, having
/// printed one line per target (stdout) or the configuration's problems (stderr).
pub fn run(config: &Config) -> i32 {
    let accounts = match &config.config_file {
        Some(path) => match crate::config_file::load(path, config) {
            Ok(accounts) => accounts,
            Err(err) => {
                for problem in &err.0 {
                    eprintln!("{problem}");
                }
                return 2;
            }
        },
        None => match crate::app::flag_accounts(config) {
            Ok(accounts) => accounts,
            Err(err) => {
                eprintln!("{err}");
                return err.exit_code();
            }
        },
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return 1;
        }
    };
    let targets = crate::config_file::target_count(&accounts);
    let outcomes = match runtime.block_on(check(accounts)) {
        Ok(outcomes) => outcomes,
        Err(err) => {
            eprintln!("{err}");
            return 2;
        }
    };
    let mut failed = 0;
    for outcome in &outcomes {
        println!("{}", outcome.line());
        failed += usize::from(outcome.result.is_err());
    }
    // A check that ended without an outcome (its task panicked) is a failure,
    // not a target left out of "every target answered".
    if outcomes.len() < targets {
        println!("{} targets gave no outcome", targets - outcomes.len());
        failed += targets - outcomes.len();
    }
    if failed == 0 {
        println!("every target answered ({targets} targets)");
        0
    } else {
        println!("{failed} of {targets} targets failed");
        1
    }
}

/// Page 1 of every target of `accounts`, in target order. A client that cannot be
/// built is a configuration error (the loaders have built each one once already).
pub async fn check(accounts: Vec<Account>) -> Result<Vec<Outcome>, ClientError> {
    // Counted into a registry nobody serves.
    let telemetry = Telemetry::new();
    let mut jobs = Vec::new();
    for account in accounts {
        let client = Arc::new(ApiClient::new(
            &account.name,
            account.client.clone(),
            &account.auth,
            telemetry.clone(),
        )?);
        let budget = Arc::new(Budget::new(
            account.concurrency,
            account.requests_per_second,
            telemetry.upstream(&account.name),
        ));
        for key in account.targets() {
            jobs.push((key, Arc::clone(&client), Arc::clone(&budget)));
        }
    }
    let limit = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, (key, client, budget)) in jobs.into_iter().enumerate() {
        let limit = Arc::clone(&limit);
        tasks.spawn(async move {
            let _slot = limit.acquire().await;
            let result = match client
                .fetch_page(&budget, key.datacenter.as_deref(), 1)
                .await
            {
                Ok(page) => Ok(page.total),
                Err(err) => {
                    let hint = err.hint(client.url());
                    Err((err, hint))
                }
            };
            (index, Outcome { key, result })
        });
    }
    let mut outcomes: Vec<(usize, Outcome)> = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        if let Ok(outcome) = joined {
            outcomes.push(outcome);
        }
    }
    outcomes.sort_by_key(|(index, _)| *index);
    Ok(outcomes.into_iter().map(|(_, o)| o).collect())
}
