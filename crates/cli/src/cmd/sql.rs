//! `sql`: SQL over the registry (model_versions, metrics, lineage_edges, …) and datasets.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{catalog, json};
use crate::table::print_table;

/// SQL over the registry (model_versions, metrics, lineage_edges, …) and datasets by name.
#[derive(clap::Args)]
pub struct Sql {
    query: String,
    #[arg(long)]
    json: bool,
}

impl Sql {
    /// Run the query and print its rows as a table or JSON objects.
    pub async fn run(self, repo: &Path) -> Result<ExitCode> {
        let cat = catalog(repo)?;
        cat.sync_sources().await?;
        let (schema, batches) = quiver_app::sql::query(&cat, &self.query).await?;
        if self.json {
            let mut out = Vec::new();
            for b in &batches {
                for i in 0..b.num_rows() {
                    let mut obj = serde_json::Map::new();
                    for (f, c) in schema.fields().iter().zip(b.columns()) {
                        obj.insert(f.name().clone(), json_value(c.as_ref(), i));
                    }
                    out.push(serde_json::Value::Object(obj));
                }
            }
            json(&out)?;
            return Ok(ExitCode::SUCCESS);
        }
        let mut rows = vec![
            schema
                .fields()
                .iter()
                .map(|f| f.name().clone())
                .collect::<Vec<_>>(),
        ];
        for b in &batches {
            let fmts: Vec<_> = b
                .columns()
                .iter()
                .map(|c| {
                    datafusion::arrow::util::display::ArrayFormatter::try_new(
                        c.as_ref(),
                        &Default::default(),
                    )
                })
                .collect::<Result<_, _>>()?;
            for i in 0..b.num_rows() {
                rows.push(fmts.iter().map(|f| f.value(i).to_string()).collect());
            }
        }
        print_table(rows);
        Ok(ExitCode::SUCCESS)
    }
}

/// One value as JSON: numbers and booleans as such, nulls as null, the rest as text.
fn json_value(a: &dyn datafusion::arrow::array::Array, i: usize) -> serde_json::Value {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type};
    if a.is_null(i) {
        return serde_json::Value::Null;
    }
    match a.data_type() {
        DataType::Int64 => a.as_primitive::<Int64Type>().value(i).into(),
        DataType::Float64 => serde_json::Number::from_f64(a.as_primitive::<Float64Type>().value(i))
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null),
        DataType::Boolean => a.as_boolean().value(i).into(),
        d if d.is_integer() || d.is_floating() => {
            match datafusion::arrow::compute::cast(&a.slice(i, 1), &DataType::Float64) {
                Ok(c) => serde_json::Number::from_f64(c.as_primitive::<Float64Type>().value(0))
                    .map(serde_json::Value::Number)
                    .unwrap_or(serde_json::Value::Null),
                Err(_) => serde_json::Value::Null,
            }
        }
        _ => datafusion::arrow::util::display::ArrayFormatter::try_new(a, &Default::default())
            .map(|f| serde_json::Value::String(f.value(i).to_string()))
            .unwrap_or(serde_json::Value::Null),
    }
}
