//! `tollgate-hub validate`: the offline half of `apply --dry-run`.

use std::io::Write;
use std::process::ExitCode;

use clap::ValueEnum;
use tollgate_common::document::DocumentSet;

use crate::cli::sources::FileArgs;
use crate::cli::sources::read_sources;

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[command(flatten)]
    files: FileArgs,

    /// What to print for a valid set.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Summary)]
    output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    /// One line per document.
    Summary,
    /// The canonical YAML the hub would store.
    Yaml,
}

impl ValidateArgs {
    pub fn run(self, out: &mut impl Write) -> anyhow::Result<ExitCode> {
        let Self { files, output } = self;
        let sources = read_sources(&files.files)?;
        match DocumentSet::from_sources(&sources) {
            Ok(set) => {
                match output {
                    Output::Summary => out.write_all(render_summary(&set).as_bytes())?,
                    Output::Yaml => out.write_all(set.to_yaml().as_bytes())?,
                }
                Ok(ExitCode::SUCCESS)
            }
            Err(errors) => {
                let mut err = std::io::stderr().lock();
                for error in &errors {
                    writeln!(err, "{error}")?;
                }
                writeln!(err, "{} error(s); nothing is valid until all are fixed", errors.len())?;
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// One line per document: kind, name, clusters and what it does.
pub fn render_summary(set: &DocumentSet) -> String {
    let mut rows = vec![["KIND".to_string(), "NAME".into(), "CLUSTERS".into(), "DETAILS".into()]];
    rows.extend(set.documents().map(|document| summary_row(&document)));
    let mut text = render_table(&rows);
    text.push_str(&format!("{} document(s) valid\n", set.len()));
    text
}

/// A document's kind, name, the clusters it selects and what it does.
pub fn summary_row(document: &tollgate_common::Document) -> [String; 4] {
    let clusters = match document.cluster_selector() {
        None => "all".to_string(),
        Some(selector) => selector_text(selector),
    };
    let details = match document {
        tollgate_common::Document::Policy(p) => format!("{} rule(s)", p.spec.egress.len()),
        tollgate_common::Document::Guardrail(g) => {
            let ceiling = match &g.spec.allowed_destinations {
                None => "no ceiling".to_string(),
                Some(list) => format!("ceiling of {} CIDR(s)", list.len()),
            };
            format!("verifiedDefault={:?}, {ceiling}", g.spec.verified_default)
        }
    };
    [
        document.kind().to_string(),
        document.name().to_string(),
        clusters,
        details,
    ]
}

/// A label selector in one line: `env=prod,region In (eu,us)`.
pub fn selector_text(selector: &tollgate_common::LabelSelector) -> String {
    let mut terms: Vec<String> = selector.match_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    terms.extend(
        selector
            .match_expressions
            .iter()
            .map(|r| format!("{} {} ({})", r.key, r.operator.as_str(), r.values.join(","))),
    );
    terms.join(",")
}

/// Left-aligned columns separated by three spaces, no trailing spaces.
pub fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < N {
                line.push_str(&format!("{cell:<width$}   ", width = widths[i]));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::document::Source;

    #[test]
    fn summary_of_the_example_fleet() {
        let text = include_str!("../../../examples/fleet-intent.yaml");
        let set = DocumentSet::from_sources(&[Source::new("fleet-intent.yaml", text)]).unwrap();
        assert_eq!(
            render_summary(&set),
            "\
KIND              NAME        CLUSTERS   DETAILS
EgressGuardrail   prod        env=prod   verifiedDefault=BaselineOnly, ceiling of 2 CIDR(s)
EgressPolicy      llm-apis    env=prod   1 rule(s)
EgressPolicy      vector-db   all        1 rule(s)
3 document(s) valid
"
        );
    }
}
