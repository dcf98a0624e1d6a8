//! `BROKER__*` variables override the file. In a test binary of its own: it sets variables.

use std::os::unix::ffi::OsStrExt;

use broker::{BrokerConfig, ErrorKind, Kind};

#[test]
fn environment_overrides_file_and_unknown_variables_are_errors() {
    let dir = std::env::temp_dir().join(format!("broker-env-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("broker.toml");
    std::fs::write(
        &path,
        "kind = \"memory\"\n[subscriber]\nmax_in_flight = 7\n",
    )
    .unwrap();

    std::env::set_var("BROKER__SUBSCRIBER__MAX_IN_FLIGHT", "9");
    std::env::set_var("BROKER__KIND", "rabbitmq");
    let config = BrokerConfig::load_from(Some(&path)).unwrap();
    assert_eq!(config.subscriber.max_in_flight, 9);
    assert_eq!(config.kind, Kind::Rabbitmq);

    std::env::set_var("BROKER__SUBSCRIBER__NOPE", "1");
    let err = BrokerConfig::load_from(Some(&path)).expect_err("unknown variable");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("nope"), "{err}");

    std::env::remove_var("BROKER__SUBSCRIBER__NOPE");
    // Values are read as written: a fraction is not rounded into an integer setting, while
    // booleans, fractions and durations where they are expected still parse.
    std::env::set_var("BROKER__SUBSCRIBER__RETRY__MAX_ATTEMPTS", "2.5");
    let err = BrokerConfig::load_from(Some(&path)).expect_err("a fraction for an integer");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err.to_string().contains("max_attempts"), "{err}");
    assert!(err.to_string().contains("2.5"), "{err}");
    // Nor is a word the `config` crate would read as 1 or 0.
    // A backend's section is read only when that backend is compiled in.
    let mut numbers = vec![
        ("BROKER__SUBSCRIBER__RETRY__MAX_ATTEMPTS", "max_attempts"),
        ("BROKER__SUBSCRIBER__MAX_IN_FLIGHT", "max_in_flight"),
        ("BROKER__SUBSCRIBER__RETRY__JITTER", "jitter"),
    ];
    #[cfg(feature = "memory")]
    numbers.push(("BROKER__MEMORY__RETAINED_MESSAGES", "retained_messages"));
    #[cfg(feature = "rabbitmq")]
    numbers.push(("BROKER__RABBITMQ__PREFETCH", "prefetch"));
    for (variable, key) in numbers {
        for word in ["true", "on", "off"] {
            std::env::set_var(variable, word);
            let err = BrokerConfig::load_from(Some(&path)).expect_err("a word for a number");
            assert!(
                err.to_string().contains(key) && err.to_string().contains(word),
                "{variable}={word}: {err}"
            );
            std::env::remove_var(variable);
        }
    }
    std::env::set_var("BROKER__SUBSCRIBER__MAX_IN_FLIGHT", "9");
    std::env::set_var("BROKER__SUBSCRIBER__RETRY__MAX_ATTEMPTS", "4");
    std::env::set_var("BROKER__SUBSCRIBER__RETRY__JITTER", "0.25");
    std::env::set_var("BROKER__SUBSCRIBER__RETRY__DEAD_LETTER", "false");
    std::env::set_var("BROKER__SUBSCRIBER__SHUTDOWN_TIMEOUT", "5s");
    std::env::set_var("BROKER__AUTO_PROVISION", "false");
    let config = BrokerConfig::load_from(Some(&path)).unwrap();
    assert_eq!(config.subscriber.retry.max_attempts, 4);
    assert_eq!(config.subscriber.retry.jitter, 0.25);
    assert!(!config.subscriber.retry.dead_letter);
    assert_eq!(
        config.subscriber.shutdown_timeout,
        std::time::Duration::from_secs(5)
    );
    assert!(!config.auto_provision());

    // Variable names are read in lower case: one meant for a topic the file names with
    // capitals would declare another topic, so it is refused, naming both.
    let topics = dir.join("topics.toml");
    std::fs::write(&topics, "[topics.Orders]\npartitions = 2\n").unwrap();
    std::env::set_var("BROKER__TOPICS__ORDERS__PARTITIONS", "6");
    let err = BrokerConfig::load_from(Some(&topics)).expect_err("a topic in another case");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string()
            .contains("BROKER__TOPICS__ORDERS__PARTITIONS")
            && err.to_string().contains("`Orders`"),
        "{err}"
    );
    // A topic named in lower case is set from the environment.
    std::fs::write(&topics, "[topics.orders]\npartitions = 2\n").unwrap();
    let config = BrokerConfig::load_from(Some(&topics)).unwrap();
    assert_eq!(config.topics["orders"].partitions, Some(6));
    std::env::remove_var("BROKER__TOPICS__ORDERS__PARTITIONS");

    std::env::set_var("BROKER_CONFIG", &path);
    let config = BrokerConfig::load().unwrap();
    assert_eq!(config.kind, Kind::Rabbitmq);

    // Not UTF-8: named, its value not shown (the prefix in any case).
    std::env::set_var(
        "broker__rabbitmq__uri",
        std::ffi::OsStr::from_bytes(b"amqp://app:s\xffcret@h/"),
    );
    let err = BrokerConfig::load().expect_err("a value that is not UTF-8");
    assert!(err.to_string().contains("broker__rabbitmq__uri"), "{err}");
    assert!(!err.to_string().contains("cret"), "{err}");
    std::env::remove_var("broker__rabbitmq__uri");

    std::env::set_var("BROKER_CONFIG", dir.join("missing.toml"));
    let err = BrokerConfig::load().expect_err("missing named file");
    assert!(err.to_string().contains("missing.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}
