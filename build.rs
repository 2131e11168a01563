//! Records what `--version` and `finovy_exporter_build_info` report about the
//! build: the git revision and branch, the build date, the compiler and the
//! platform, as Prometheus' own tools print them.
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=FINOVY_REVISION");
    println!("cargo:rerun-if-env-changed=FINOVY_BRANCH");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let revision = from_env_or_git("FINOVY_REVISION", &["rev-parse", "--short=12", "HEAD"]);
    let branch = from_env_or_git("FINOVY_BRANCH", &["rev-parse", "--abbrev-ref", "HEAD"]);
    println!("cargo:rustc-env=FINOVY_REVISION={revision}");
    println!("cargo:rustc-env=FINOVY_BRANCH={branch}");

    // SOURCE_DATE_EPOCH makes the build date reproducible; else it is now.
    let epoch = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    println!("cargo:rustc-env=FINOVY_BUILD_DATE={}", build_date(epoch));

    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc_version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=FINOVY_RUSTC_VERSION={rustc_version}");

    // Go's GOOS/GOARCH spelling, as Prometheus prints its platform.
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_else(|_| "unknown".into());
    let arch = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "amd64".to_string(),
        Ok("aarch64") => "arm64".to_string(),
        Ok("x86") => "386".to_string(),
        Ok(other) => other.to_string(),
        Err(_) => "unknown".to_string(),
    };
    println!("cargo:rustc-env=FINOVY_PLATFORM={os}/{arch}");
}

/// A variable's value, else git's answer, else `unknown`.
fn from_env_or_git(var: &str, args: &[&str]) -> String {
    std::env::var(var)
        .ok()
        .or_else(|| {
            Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// `YYYYMMDD-HH:MM:SS` in UTC, Prometheus' build date format.
fn build_date(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}-{:02}:{:02}:{:02}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}
