//! The credentials the clients are built with, from the configuration's choice.

use broker_api::{Error, Result};
use google_cloud_auth::credentials::Credentials;

use crate::config::CredentialsChoice;
use crate::error::BACKEND;

/// The credentials handed to the clients: anonymous for the emulator, the service-account key
/// of `credentials_file`, or Application Default Credentials (loaded once, shared by every
/// client). Errors are configuration errors that name the file, never its content.
pub(crate) fn credentials(choice: &CredentialsChoice) -> Result<Option<Credentials>> {
    match choice {
        CredentialsChoice::Anonymous => Ok(Some(
            google_cloud_auth::credentials::anonymous::Builder::new().build(),
        )),
        CredentialsChoice::ApplicationDefault => google_cloud_auth::credentials::Builder::default()
            .build()
            .map(Some)
            .map_err(|e| {
                Error::config(
                    "no usable Application Default Credentials: set \
                         GOOGLE_APPLICATION_CREDENTIALS, run `gcloud auth application-default \
                         login`, set pubsub.credentials_file, or set pubsub.endpoint to use the \
                         emulator",
                )
                .backend(BACKEND)
                .operation("connect")
                .source(e)
            }),
        CredentialsChoice::ServiceAccountFile(path) => {
            let shown = path.display();
            let text = std::fs::read(path).map_err(|e| {
                Error::config(format!("pubsub.credentials_file: cannot read {shown}"))
                    .backend(BACKEND)
                    .operation("connect")
                    .source(e)
            })?;
            let key: serde_json::Value = serde_json::from_slice(&text).map_err(|_| {
                Error::config(format!(
                    "pubsub.credentials_file: {shown} is not a JSON service-account key"
                ))
                .backend(BACKEND)
                .operation("connect")
            })?;
            google_cloud_auth::credentials::service_account::Builder::new(key)
                .build()
                .map(Some)
                .map_err(|_| {
                    Error::config(format!(
                        "pubsub.credentials_file: {shown} is not a valid service-account key"
                    ))
                    .backend(BACKEND)
                    .operation("connect")
                })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use broker_api::ErrorKind;

    #[test]
    fn the_emulator_gets_anonymous_credentials() {
        let credentials = credentials(&CredentialsChoice::Anonymous).unwrap();
        assert!(credentials.is_some());
    }

    #[test]
    fn bad_key_files_are_config_errors_that_show_no_content() {
        let dir = std::env::temp_dir().join(format!("broker-pubsub-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.json");
        let err = credentials(&CredentialsChoice::ServiceAccountFile(missing.clone())).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(err.to_string().contains("cannot read"), "{err}");
        assert!(
            err.to_string().contains(&*missing.to_string_lossy()),
            "{err}"
        );

        let not_json = dir.join("not-json.json");
        std::fs::write(&not_json, "secret-material").unwrap();
        let err = credentials(&CredentialsChoice::ServiceAccountFile(not_json)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("not a JSON service-account key"),
            "{err}"
        );
        assert!(!format!("{err:?}").contains("secret-material"), "{err:?}");

        let not_a_key = dir.join("not-a-key.json");
        std::fs::write(&not_a_key, r#"{"private_key": "secret-material"}"#).unwrap();
        let err = credentials(&CredentialsChoice::ServiceAccountFile(not_a_key)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config);
        assert!(
            err.to_string().contains("not a valid service-account key"),
            "{err}"
        );
        assert!(!format!("{err:?}").contains("secret-material"), "{err:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
