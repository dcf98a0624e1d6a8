//! Every configuration mistake is a clear error naming what was wrong.

use std::io::Write;

use broker::{BrokerConfig, ErrorKind, Kind, StartFrom};

fn error_of(toml: &str) -> String {
    let err = BrokerConfig::from_toml(toml).expect_err("the configuration must be refused");
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    err.to_string()
}

#[test]
fn a_full_file_parses() {
    let config = BrokerConfig::from_toml(
        r#"
        kind = "memory"
        auto_provision = false

        [subscriber]
        start_from = "latest"
        max_in_flight = 64
        retry = { min_backoff = "50ms", max_backoff = "5s", jitter = 0.1, max_attempts = 3, dead_letter = false }

        [memory]
        instance = "tests"

        [topics.greetings]
        groups = ["greeting-stats", "audit"]
        partitions = 3
        "#,
    )
    .unwrap();
    assert_eq!(config.kind, Kind::Memory);
    assert!(!config.auto_provision());
    assert_eq!(config.subscriber.start_from, StartFrom::Latest);
    assert_eq!(config.subscriber.max_in_flight, 64);
    assert_eq!(config.subscriber.retry.min_backoff.as_millis(), 50);
    assert!(!config.subscriber.retry.dead_letter);
    let specs = config.topic_specs();
    assert_eq!(specs[0].name, "greetings");
    assert_eq!(specs[0].groups, ["greeting-stats", "audit"]);
    assert_eq!(specs[0].partitions, Some(3));
}

#[test]
fn an_empty_file_means_the_in_memory_default() {
    let config = BrokerConfig::from_toml("").unwrap();
    assert_eq!(config.kind, Kind::Memory);
    assert!(config.auto_provision());
    assert_eq!(config.subscriber.max_in_flight, 256);
}

#[test]
fn unknown_kind_lists_the_accepted_ones() {
    let err = error_of(r#"kind = "kafak""#);
    assert!(err.contains("kafak"), "{err}");
    assert!(
        err.contains("memory") && err.contains("rabbitmq") && err.contains("pubsub"),
        "{err}"
    );
}

#[test]
fn unknown_top_level_key_is_named() {
    let err = error_of(r#"kindd = "memory""#);
    assert!(err.contains("kindd"), "{err}");
}

#[test]
fn unknown_nested_key_is_named() {
    let err = error_of("[subscriber]\nmax_in_flite = 3\n");
    assert!(err.contains("max_in_flite"), "{err}");
    let err = error_of("[subscriber.retry]\nmax_atempts = 3\n");
    assert!(err.contains("max_atempts"), "{err}");
    let err = error_of("[topics.greetings]\ngroup = [\"a\"]\n");
    assert!(err.contains("group"), "{err}");
}

#[test]
fn malformed_duration_names_the_value() {
    let err = error_of("[subscriber.retry]\nmin_backoff = \"10 parsecs\"\n");
    assert!(err.contains("parsecs"), "{err}");
}

#[test]
fn malformed_number_names_the_key() {
    let err = error_of("[subscriber]\nmax_in_flight = \"many\"\n");
    assert!(
        err.contains("max_in_flight") || err.contains("many"),
        "{err}"
    );
    let err = error_of("[subscriber]\nmax_in_flight = -4\n");
    assert!(err.contains("max_in_flight") || err.contains("-4"), "{err}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let err = error_of("[subscriber]\nmax_in_flight = 0\n");
    assert!(err.contains("subscriber.max_in_flight"), "{err}");
    let err = error_of("[subscriber]\nmax_in_flight = 3000000000000000000\n");
    assert!(err.contains("from 1 to 1000000"), "{err}");
    let err = error_of("[subscriber.retry]\njitter = 2.0\n");
    assert!(err.contains("subscriber.retry.jitter"), "{err}");
    let err = error_of("[subscriber.retry]\nmax_attempts = 2.5\n");
    assert!(err.contains("max_attempts"), "{err}");
    let err = error_of("[subscriber]\nmax_in_flight = true\n");
    assert!(err.contains("max_in_flight"), "{err}");
    let err = error_of("[subscriber.retry]\ndead_letter = 1\n");
    assert!(err.contains("line 2: `dead_letter = …`"), "{err}");
    let err = error_of("[memory]\nmax_payload_bytes = 0\n");
    assert!(err.contains("memory.max_payload_bytes"), "{err}");
    let err = error_of("[memory]\ninstance = \"\"\n");
    assert!(err.contains("memory.instance = \"\""), "{err}");
    // Values that parse but make no sense name where they were read, as syntax errors do.
    assert!(
        err.contains("invalid configuration in the given TOML: memory.instance"),
        "{err}"
    );
    let err = error_of("[topics.greetings]\npartitions = 0\n");
    assert!(err.contains("[topics.greetings] partitions"), "{err}");
    let err = error_of("[topics.greetings]\npartitions = 100001\n");
    assert!(
        err.contains("[topics.greetings] partitions = 100001: expected 1 to 100000"),
        "{err}"
    );
    let err = error_of("[topics.\"bad name\"]\ngroups = []\n");
    assert!(err.contains("bad name"), "{err}");
}

/// A TOML syntax error names its line, not what is written there: a secret, perhaps.
#[test]
fn a_syntax_error_does_not_quote_its_line() {
    let err = error_of("[rabbitmq]\nuri = \"amqp://app:hunter2@rabbit:5672/prod\n");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = error_of("kind = \"memory\"\namqp://app:hunter2@rabbit\n");
    assert!(err.contains("line 2"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    // A line inside a multi-line string is all value, `=` or not.
    let err = error_of("[rabbitmq]\nuri = \"\"\"amqp://app:\nhunter2 = \\q@rabbit\"\"\"\n");
    assert!(err.contains("line 3"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
}

/// A string where a section or a map was meant (a URI without its key, say) is refused naming
/// the key, without quoting the string: it may be a secret.
#[cfg(feature = "memory")]
#[test]
fn a_string_for_a_section_is_not_quoted() {
    let err = error_of("memory = \"amqp://app:hunter2@rabbit/\"\n");
    assert!(err.contains("memory"), "{err}");
    assert!(err.contains("a string"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");
    let err = error_of("[topics.orders]\ngroups = \"pass\\\"word\"\n");
    assert!(err.contains("groups"), "{err}");
    assert!(!err.contains("word"), "{err}");
}

/// A value of the wrong type is named by its key; its line is not quoted, since other values
/// on it may be secrets.
#[cfg(feature = "kafka")]
#[test]
fn a_wrongly_typed_value_does_not_quote_its_line() {
    let err = error_of(
        "kind = \"kafka\"\nkafka = { partitions = 2.5, properties = { \"sasl.password\" = \"s3cr3t\" } }\n",
    );
    assert!(err.contains("kafka.partitions"), "{err}");
    assert!(!err.contains("s3cr3t"), "{err}");
}

/// librdkafka properties written as numbers or booleans are taken as their text.
#[cfg(feature = "kafka")]
#[test]
fn kafka_properties_may_be_numbers_and_booleans() {
    let config = BrokerConfig::from_toml(
        "kind = \"kafka\"\n[kafka]\nproperties = { \"linger.ms\" = 5, \"enable.ssl.certificate.verification\" = false, \"sasl.username\" = \"app\" }\n",
    )
    .expect("accepted");
    let kafka = config.kafka.expect("a kafka section");
    assert_eq!(kafka.properties["linger.ms"], "5");
    assert_eq!(
        kafka.properties["enable.ssl.certificate.verification"],
        "false"
    );
    assert_eq!(kafka.properties["sasl.username"], "app");
}

#[test]
fn a_named_file_that_does_not_exist_is_an_error() {
    let err = BrokerConfig::load_from(Some(std::path::Path::new("/nonexistent/broker.toml")))
        .expect_err("missing named file");
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(
        err.to_string().contains("/nonexistent/broker.toml"),
        "{err}"
    );
}

#[test]
fn a_named_file_is_read() {
    let dir = std::env::temp_dir().join(format!("broker-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("custom.toml");
    let mut file = std::fs::File::create(&path).unwrap();
    writeln!(file, "[subscriber]\nmax_in_flight = 7").unwrap();
    let config = BrokerConfig::load_from(Some(&path)).unwrap();
    assert_eq!(config.subscriber.max_in_flight, 7);
    let err = {
        std::fs::write(&path, "[subscriber\n").unwrap();
        BrokerConfig::load_from(Some(&path)).expect_err("malformed TOML")
    };
    assert!(err.to_string().contains("custom.toml"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(not(feature = "kafka"))]
#[tokio::test]
async fn a_kind_not_compiled_in_names_the_feature() {
    let config = BrokerConfig::from_toml(r#"kind = "kafka""#).unwrap();
    let err = broker::connect_with(config)
        .await
        .expect_err("kafka is not compiled in");
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("`kafka` feature"), "{err}");
}

#[tokio::test]
async fn declared_topics_are_created_at_connect() {
    let config = BrokerConfig::from_toml(
        r#"
        [memory]
        instance = "declared-topics-test"
        [topics.greetings]
        groups = ["greeting-stats"]
        "#,
    )
    .unwrap();
    let broker = broker::connect_with(config).await.unwrap();
    let topics = broker.backend().list_topics().await.unwrap();
    assert!(topics.contains(&"greetings".to_owned()), "{topics:?}");
    broker.close().await.unwrap();
}

/// A partition count no broker takes is refused before any backend sees it.
#[tokio::test]
async fn a_topic_spec_with_an_impossible_partition_count_is_refused() {
    let broker = broker::connect_with(BrokerConfig::default()).await.unwrap();
    for partitions in [0, 3_000_000_000] {
        let spec = broker::TopicSpec::new("greetings").partitions(partitions);
        let err = broker.ensure_topic(&spec).await.unwrap_err();
        assert_eq!(err.kind(), broker::ErrorKind::Config);
        assert!(
            err.to_string()
                .contains(&format!("partitions of topic greetings = {partitions}")),
            "{err}"
        );
    }
    broker.close().await.unwrap();
}

#[test]
#[ignore = "prints every error text for review"]
fn print_errors() {
    for toml in [
        r#"kind = "kafak""#,
        r#"kindd = "memory""#,
        "[subscriber]\nmax_in_flite = 3\n",
        "[subscriber.retry]\nmin_backoff = \"10 parsecs\"\n",
        "[subscriber]\nmax_in_flight = \"many\"\n",
        "[subscriber]\nmax_in_flight = -4\n",
        "[topics.greetings]\ngroup = [\"a\"]\n",
        "[subscriber\n",
    ] {
        println!(
            "{toml:?}\n  -> {}",
            BrokerConfig::from_toml(toml).unwrap_err()
        );
    }
}
