//! Parsing, validation and the derived librdkafka settings of the `[kafka]` section.

use super::*;
use rdkafka::error::KafkaError;

fn parse(text: &str) -> std::result::Result<KafkaConfig, String> {
    serde_json::from_str(text).map_err(|e| e.to_string())
}

#[test]
fn defaults_point_at_a_local_broker() {
    let config = parse("{}").unwrap();
    assert_eq!(config.bootstrap_servers, "127.0.0.1:9092");
    assert_eq!(config.connect_timeout, Duration::from_secs(10));
    assert_eq!(config.delivery_timeout, Duration::from_secs(60));
    assert_eq!(config.message_max_bytes(), 1_000_000);
    assert!(config.validate().is_ok());
}

#[test]
fn fields_and_properties_parse() {
    let config = parse(
        r#"{"bootstrap_servers": "k1:9092,k2:9092", "connect_timeout": "3s",
            "partitions": 3, "replication_factor": 2,
            "properties": {"compression.type": "lz4", "message.max.bytes": "2000000"}}"#,
    )
    .unwrap();
    assert_eq!(config.connect_timeout, Duration::from_secs(3));
    assert_eq!(config.partitions, Some(3));
    assert_eq!(config.message_max_bytes(), 2_000_000);
    assert!(config.validate().is_ok());
    let producer = config.producer_config();
    assert_eq!(producer.get("compression.type"), Some("lz4"));
    assert_eq!(producer.get("acks"), Some("all"));
    assert_eq!(producer.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
}

#[test]
fn unknown_keys_and_bad_durations_are_rejected() {
    let err = parse(r#"{"bootstrap": "x"}"#).unwrap_err();
    assert!(err.contains("unknown field `bootstrap`"), "{err}");
    let err = parse(r#"{"connect_timeout": "soon"}"#).unwrap_err();
    assert!(err.contains("soon") || err.contains("duration"), "{err}");
}

/// Values librdkafka would refuse on every admin request are refused up front.
#[test]
fn admin_request_limits_are_config_errors() {
    let refused = |config: KafkaConfig| config.validate().unwrap_err().to_string();
    let err = refused(KafkaConfig {
        replication_factor: Some(10_001),
        ..KafkaConfig::default()
    });
    assert!(err.contains("kafka.replication_factor = 10001"), "{err}");
    let err = refused(KafkaConfig {
        replication_factor: Some(0),
        ..KafkaConfig::default()
    });
    assert!(err.contains("kafka.replication_factor = 0"), "{err}");
    let err = refused(KafkaConfig {
        connect_timeout: Duration::from_secs(7200),
        ..KafkaConfig::default()
    });
    assert!(err.contains("kafka.connect_timeout = 2h"), "{err}");
    let err = refused(KafkaConfig {
        partitions: Some(100_001),
        ..KafkaConfig::default()
    });
    assert!(err.contains("kafka.partitions = 100001"), "{err}");
    let accepted = KafkaConfig {
        replication_factor: Some(10_000),
        connect_timeout: Duration::from_secs(3600),
        partitions: Some(100_000),
        ..KafkaConfig::default()
    };
    accepted.validate().unwrap();
}

#[test]
fn properties_override_defaults_but_not_the_group() {
    let mut config = KafkaConfig::default();
    config
        .properties
        .insert("session.timeout.ms".into(), "30000".into());
    config.properties.insert("group.id".into(), "other".into());
    config
        .properties
        .insert("message.timeout.ms".into(), "5000".into());
    let consumer = config.consumer_client_config("billing", StartFrom::Latest, 256);
    assert_eq!(consumer.get("session.timeout.ms"), Some("30000"));
    assert_eq!(consumer.get("group.id"), Some("billing"));
    assert_eq!(consumer.get("auto.offset.reset"), Some("latest"));
    assert_eq!(consumer.get("enable.auto.offset.store"), Some("false"));
    assert_eq!(
        config.effective_delivery_timeout(),
        Duration::from_millis(5000)
    );
}

#[test]
fn the_delivery_timeout_follows_either_property_name_and_is_bounded() {
    let mut config = KafkaConfig::default();
    config
        .properties
        .insert("delivery.timeout.ms".into(), "7000".into());
    assert_eq!(
        config.effective_delivery_timeout(),
        Duration::from_millis(7000)
    );
    let producer = config.producer_config();
    assert_eq!(producer.get("message.timeout.ms"), Some("7000"));
    assert_eq!(producer.get("delivery.timeout.ms"), None, "set once");
    config
        .properties
        .insert("message.timeout.ms".into(), "5000".into());
    assert_eq!(
        config.effective_delivery_timeout(),
        Duration::from_millis(5000),
        "message.timeout.ms wins"
    );
    assert_eq!(
        config.producer_config().get("message.timeout.ms"),
        Some("5000")
    );
    config
        .properties
        .insert("delivery.timeout.ms".into(), "0".into());
    let error = config.validate().expect_err("no limit is refused");
    assert!(
        error
            .to_string()
            .contains("\"delivery.timeout.ms\" = \"0\""),
        "{error}"
    );
}

#[test]
fn prefetch_follows_max_in_flight_unless_overridden() {
    let config = KafkaConfig::default();
    let consumer = config.consumer_client_config("g", StartFrom::Earliest, 256);
    assert_eq!(consumer.get("queued.min.messages"), Some("4096"));
    assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("4096"));
    let small = config.consumer_client_config("g", StartFrom::Earliest, 1);
    assert_eq!(small.get("queued.min.messages"), Some("16"));
    assert_eq!(small.get("queued.max.messages.kbytes"), Some("1024"));
    let mut config = KafkaConfig::default();
    config
        .properties
        .insert("queued.max.messages.kbytes".into(), "65536".into());
    let consumer = config.consumer_client_config("g", StartFrom::Earliest, 256);
    assert_eq!(consumer.get("queued.max.messages.kbytes"), Some("65536"));
    assert!(config.validate().is_ok());
}

#[test]
fn rejected_properties_are_config_errors_naming_them() {
    let mut config = KafkaConfig::default();
    config.properties.insert("no.such.thing".into(), "1".into());
    let err = config.validate().unwrap_err();
    assert_eq!(err.kind(), broker_api::ErrorKind::Config);
    assert!(err.to_string().contains("no.such.thing"), "{err}");

    let mut config = KafkaConfig::default();
    config.properties.insert("acks".into(), "several".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("acks"), "{err}");
}

#[test]
fn properties_cannot_weaken_what_a_confirmation_means() {
    for (name, value) in [
        ("acks", "1"),
        ("acks", "0"),
        ("request.required.acks", "1"),
        ("enable.idempotence", "false"),
    ] {
        let mut config = KafkaConfig::default();
        config.properties.insert(name.into(), value.into());
        let err = config.validate().unwrap_err();
        assert_eq!(err.kind(), broker_api::ErrorKind::Config);
        assert!(
            err.to_string()
                .contains(&format!("kafka.properties.\"{name}\"")),
            "{err}"
        );
    }
    for (name, value) in [
        ("acks", "all"),
        ("acks", "-1"),
        ("enable.idempotence", "true"),
    ] {
        let mut config = KafkaConfig::default();
        config.properties.insert(name.into(), value.into());
        assert!(config.validate().is_ok(), "{name} = {value}");
    }
}

#[test]
fn secrets_never_show() {
    let mut config = KafkaConfig::default();
    config
        .properties
        .insert("sasl.password".into(), "hunter2".into());
    config
        .properties
        .insert("ssl.key.password".into(), "hunter3".into());
    config
        .properties
        .insert("compression.type".into(), "zstd".into());
    let debug = format!("{config:?}");
    assert!(!debug.contains("hunter"), "{debug}");
    assert!(debug.contains("zstd"), "{debug}");

    let error = KafkaError::ClientConfig(
        rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
        "Invalid value \"hunter2\"".into(),
        "sasl.password".into(),
        "hunter2".into(),
    );
    let text = property_error(&error).to_string();
    assert!(!text.contains("hunter2"), "{text}");
    assert!(text.contains("sasl.password"), "{text}");

    // librdkafka's reason, when it does not quote the value.
    let error = KafkaError::ClientConfig(
        rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_INVALID,
        "Unsupported SASL mechanism".into(),
        "sasl.mechanisms".into(),
        "PLAN".into(),
    );
    let text = property_error(&error).to_string();
    assert!(text.contains("Unsupported SASL mechanism"), "{text}");
}

#[test]
fn a_misspelled_secret_property_does_not_show_its_value() {
    for name in [
        "sasl.pasword",
        "ssl.keystore.pasword",
        "sals.passwd",
        "x.pwd",
    ] {
        let mut config = KafkaConfig::default();
        config.properties.insert(name.into(), "hunter2".into());
        let text = config.validate().unwrap_err().to_string();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains(name), "{text}");
        let debug = format!("{config:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}

#[test]
fn a_nul_character_is_an_error_naming_its_key() {
    let mut config = KafkaConfig::default();
    config
        .properties
        .insert("sasl.username".into(), "a\0b".into());
    let err = config.validate().unwrap_err();
    assert_eq!(err.kind(), broker_api::ErrorKind::Config);
    assert!(err.to_string().contains("\"sasl.username\""), "{err}");
    let config = KafkaConfig {
        bootstrap_servers: "127.0.0.1:9092\0".into(),
        ..KafkaConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.bootstrap_servers"), "{err}");
}

#[test]
fn librdkafka_is_built_with_tls_sasl_and_every_codec() {
    let native = KafkaConfig::default()
        .producer_config()
        .create_native_config()
        .unwrap();
    let features = native.get("builtin.features").unwrap();
    for feature in [
        "ssl",
        "sasl_plain",
        "sasl_scram",
        "sasl_oauthbearer",
        "gzip",
        "snappy",
        "lz4",
        "zstd",
    ] {
        assert!(features.contains(feature), "{feature} missing: {features}");
    }
}

#[test]
fn zero_values_name_their_key() {
    let config = KafkaConfig {
        partitions: Some(0),
        ..KafkaConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.partitions"), "{err}");
    let config = KafkaConfig {
        partitions: Some(3_000_000_000),
        ..KafkaConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.partitions = 3000000000"), "{err}");
    let mut config = KafkaConfig::default();
    config
        .properties
        .insert("message.max.bytes".into(), "3000".into());
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("\"message.max.bytes\" = \"3000\""), "{err}");
    let config = KafkaConfig {
        connect_timeout: Duration::ZERO,
        ..KafkaConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.connect_timeout"), "{err}");
    // librdkafka takes timeouts as 32-bit milliseconds: 30 days would wrap negative.
    let config = KafkaConfig {
        close_timeout: Duration::from_secs(30 * 24 * 3600),
        ..KafkaConfig::default()
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("kafka.close_timeout = 30days"), "{err}");
    assert!(err.contains("at most 1 day"), "{err}");
}
