//! The repository's object-storage settings, sent with each job as DataFusion configuration
//! (`quiver.s3_endpoint`, ...) so that executors reach the store the client reads. Where,
//! never who: credentials are not sent; each executor takes its own from its environment or
//! credentials file, as the client does.

use datafusion::common::extensions_options;
use datafusion::config::ConfigExtension;
use quiver_core::config::Storage;

extensions_options! {
    /// `storage.s3` of the client's `quiver.yaml`; an empty value is unset.
    pub struct StorageOptions {
        /// `storage.s3.endpoint`.
        pub s3_endpoint: String, default = String::new()
        /// `storage.s3.region`.
        pub s3_region: String, default = String::new()
        /// `storage.s3.path_style`: `true`, `false` or empty.
        pub s3_path_style: String, default = String::new()
        /// `storage.s3.allow_http`: `true`, `false` or empty.
        pub s3_allow_http: String, default = String::new()
    }
}

impl ConfigExtension for StorageOptions {
    const PREFIX: &'static str = "quiver";
}

impl StorageOptions {
    /// The options that carry `storage`.
    pub fn of(storage: &Storage) -> StorageOptions {
        let text = |v: &Option<String>| v.clone().unwrap_or_default();
        let flag = |v: Option<bool>| v.map(|b| b.to_string()).unwrap_or_default();
        StorageOptions {
            s3_endpoint: text(&storage.s3_endpoint),
            s3_region: text(&storage.s3_region),
            s3_path_style: flag(storage.s3_path_style),
            s3_allow_http: flag(storage.s3_allow_http),
        }
    }

    /// The settings these options carry.
    pub fn storage(&self) -> Storage {
        let text = |v: &str| (!v.is_empty()).then(|| v.to_string());
        let flag = |v: &str| v.parse::<bool>().ok();
        Storage {
            s3_endpoint: text(&self.s3_endpoint),
            s3_region: text(&self.s3_region),
            s3_path_style: flag(&self.s3_path_style),
            s3_allow_http: flag(&self.s3_allow_http),
        }
    }
}
