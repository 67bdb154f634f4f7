//! Ferry's operator. The controllers land with the operator work; until then the
//! binary only tells what it manages.

fn main() {
    println!(
        "ferry-operator {}: manages {}/{} Connector and ConnectorRun; controllers not built yet",
        env!("CARGO_PKG_VERSION"),
        ferry_crds::GROUP,
        ferry_crds::VERSION
    );
    std::process::exit(2);
}
