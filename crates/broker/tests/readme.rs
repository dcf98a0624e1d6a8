//! The configuration reference in README.md parses, so the documentation stays true.

use broker::{BrokerConfig, Kind};

#[test]
fn the_readme_configuration_example_parses() {
    let readme = include_str!("../../../README.md");
    let start = readme
        .find("```toml\nkind = ")
        .expect("README.md has the configuration example");
    let block = &readme[start + "```toml\n".len()..];
    let block = &block[..block.find("```").expect("the block ends")];
    let config = BrokerConfig::from_toml(block)
        .unwrap_or_else(|e| panic!("README.md's configuration example does not parse: {e}"));
    assert_eq!(config.kind, Kind::Memory);
    assert_eq!(config.topics["greetings"].groups, ["greeting-stats"]);
    #[cfg(feature = "kafka")]
    assert_eq!(
        config.kafka.expect("kafka section").bootstrap_servers,
        "127.0.0.1:9092"
    );
}
