//! Service identity: the name, version, environment and instance of the running service.
//!
//! Logs, spans, metrics and service tokens all label themselves with it. [`ServiceInfo::from_env`]
//! reads the OpenTelemetry variables first (`OTEL_SERVICE_NAME`), then `SERVICE_NAME`,
//! `SERVICE_VERSION`, `DEPLOYMENT_ENVIRONMENT` and `HOSTNAME`.
//!
//! ```
//! use chassis_core::ServiceInfo;
//! let info = ServiceInfo::new("orders", "1.2.0").environment("staging");
//! assert_eq!(info.name, "orders");
//! assert_eq!(info.environment, "staging");
//! ```

use serde::Deserialize;

/// Who this service is.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ServiceInfo {
    /// `service.name`.
    pub name: String,
    /// `service.version`.
    pub version: String,
    /// `deployment.environment` (e.g. `development`, `production`). Defaults to `development`.
    #[serde(default = "default_environment")]
    pub environment: String,
    /// `service.instance.id`: unique per process. Defaults to the host name plus the pid.
    #[serde(default = "default_instance_id")]
    pub instance_id: String,
}

fn default_environment() -> String {
    "development".to_owned()
}

fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}

impl ServiceInfo {
    /// A service called `name` at `version`, in the `development` environment.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            environment: default_environment(),
            instance_id: default_instance_id(),
        }
    }

    /// Sets the deployment environment.
    pub fn environment(mut self, environment: impl Into<String>) -> Self {
        self.environment = environment.into();
        self
    }

    /// Reads the identity from the environment, falling back to the given name and version
    /// (pass `env!("CARGO_PKG_NAME")`, `env!("CARGO_PKG_VERSION")`).
    pub fn from_env(default_name: &str, default_version: &str) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self {
            name: var("OTEL_SERVICE_NAME")
                .or_else(|| var("SERVICE_NAME"))
                .unwrap_or_else(|| default_name.to_owned()),
            version: var("SERVICE_VERSION").unwrap_or_else(|| default_version.to_owned()),
            environment: var("DEPLOYMENT_ENVIRONMENT").unwrap_or_else(default_environment),
            instance_id: var("SERVICE_INSTANCE_ID").unwrap_or_else(default_instance_id),
        }
    }
}
