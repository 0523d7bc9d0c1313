//! Quiver's built-in trainer (DESIGN §7): linear regression, logistic regression and decision
//! trees from `smartcore`, over the numeric columns of a training set.
//!
//! A [`Model`] is self-describing: the feature columns it reads, the per-column means used for
//! missing values, and the fitted parameters. Linear models keep their coefficients as plain
//! numbers (prediction is a dot product, no library call); trees keep smartcore's fitted tree.
//! The artifact ([`Model::to_bytes`]) is JSON with a format version, so the same data, params
//! and seed give byte-identical artifacts.
//!
//! ```
//! use std::sync::Arc;
//! use arrow_array::{Float64Array, RecordBatch};
//! let x: Vec<f64> = (0..50).map(|i| i as f64).collect();
//! let y: Vec<f64> = x.iter().map(|v| 3.0 * v + 1.0).collect();
//! let b = RecordBatch::try_from_iter(vec![
//!     ("x", Arc::new(Float64Array::from(x)) as _),
//!     ("y", Arc::new(Float64Array::from(y)) as _),
//! ]).unwrap();
//! let spec = quiver_train::Spec { algo: quiver_train::Algo::Linear, label: "y".into(),
//!     features: vec!["x".into()], params: Default::default(), seed: 0 };
//! let m = quiver_train::train(&b, &spec).unwrap();
//! let p = m.predict(&b).unwrap();
//! assert!((p[10] - 31.0).abs() < 1e-6);
//! ```

use std::collections::BTreeMap;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use serde::{Deserialize, Serialize};
use smartcore::linalg::basic::matrix::DenseMatrix;
use smartcore::linear::linear_regression::{LinearRegression, LinearRegressionParameters};
use smartcore::linear::logistic_regression::{LogisticRegression, LogisticRegressionParameters};
use smartcore::tree::decision_tree_classifier::{
    DecisionTreeClassifier, DecisionTreeClassifierParameters,
};
use smartcore::tree::decision_tree_regressor::{
    DecisionTreeRegressor, DecisionTreeRegressorParameters,
};

/// The artifact format written by this build.
pub const FORMAT: u32 = 1;

/// Result alias with the trainer's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a model could not be trained, loaded or applied.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A column the model reads is not in the dataset: the column, then the dataset's columns.
    #[error("column `{0}` is not in the dataset (columns: {1})")]
    MissingColumn(String, String),
    /// A column the model reads is not numeric (integers, floats or booleans).
    #[error("column `{column}` is {dtype}: a model reads numbers (ints, floats, bools)")]
    NotNumeric {
        /// The column's name.
        column: String,
        /// The column's Arrow type, as displayed.
        dtype: String,
    },
    /// A training row has no label, so it cannot be learned from.
    #[error("label `{column}` has a null at row {row}")]
    NullLabel {
        /// The label column.
        column: String,
        /// The row number in the training data, from 0.
        row: usize,
    },
    /// A parameter, label or feature list that the learner cannot take.
    #[error("parameter {0}")]
    Param(String),
    /// The learner failed to fit the data.
    #[error("{algo}: {message}")]
    Fit {
        /// The learner's name.
        algo: String,
        /// smartcore's message.
        message: String,
    },
    /// The dataset has no rows; the text says for what (`train on`, `use`).
    #[error("the dataset has no rows to {0}")]
    Empty(&'static str),
    /// A model artifact that cannot be read, or data that does not fit its matrix.
    #[error("model artifact: {0}")]
    Artifact(String),
}

/// Which learner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    /// Least-squares linear regression: predicts a number.
    Linear,
    /// Logistic regression: predicts the probability of class 1 (labels 0 and 1).
    Logistic,
    /// A decision tree, classifying or regressing (parameter `task`; default: classification
    /// when every label is 0 or 1).
    Tree,
}

impl std::str::FromStr for Algo {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "linear" => Ok(Algo::Linear),
            "logistic" => Ok(Algo::Logistic),
            "tree" => Ok(Algo::Tree),
            _ => Err(Error::Param(format!(
                "--algo {s:?}: one of linear, logistic, tree"
            ))),
        }
    }
}

impl Algo {
    /// The learner's name, as written in `--algo` and recorded with a model.
    pub fn name(self) -> &'static str {
        match self {
            Algo::Linear => "linear",
            Algo::Logistic => "logistic",
            Algo::Tree => "tree",
        }
    }
}

/// What to train.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The learner to fit.
    pub algo: Algo,
    /// The label column to predict.
    pub label: String,
    /// Feature columns, in order.
    pub features: Vec<String>,
    /// Learner parameters: `alpha` (logistic), `max_depth`, `min_samples_leaf`,
    /// `min_samples_split` (tree), `task` = `classification|regression` (tree).
    pub params: BTreeMap<String, String>,
    /// The random seed, used by decision trees; recorded so training can be repeated exactly.
    pub seed: u64,
}

/// Classification predicts a class (and a probability of class 1); regression a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// The label is a number to predict.
    Regression,
    /// The label is a whole-number class.
    Classification,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Fitted {
    /// y = intercept + Σ wᵢxᵢ; for logistic, P(class 1) = σ(…).
    Linear {
        intercept: f64,
        weights: Vec<f64>,
    },
    TreeClassifier {
        tree: DecisionTreeClassifier<f64, i64, DenseMatrix<f64>, Vec<i64>>,
        /// The classes in the order of the tree's probability columns (sorted).
        classes: Vec<i64>,
    },
    TreeRegressor(DecisionTreeRegressor<f64, f64, DenseMatrix<f64>, Vec<f64>>),
}

/// A trained model.
#[derive(Debug, Serialize, Deserialize)]
pub struct Model {
    /// The artifact format version ([`FORMAT`]).
    pub format: u32,
    /// The learner that fitted it.
    pub algo: Algo,
    /// Whether it predicts a number or a class.
    pub task: Task,
    /// The label column it was trained to predict.
    pub label: String,
    /// The feature columns it reads, in order.
    pub features: Vec<String>,
    /// Training means, used for missing feature values.
    pub fill: Vec<f64>,
    /// The learner parameters it was trained with.
    pub params: BTreeMap<String, String>,
    /// The seed it was trained with.
    pub seed: u64,
    fitted: Fitted,
}

/// One numeric column as f64 (bools as 0/1), nulls as `None`.
fn column_f64(b: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>> {
    let s = b.schema();
    let i = s.index_of(name).map_err(|_| {
        Error::MissingColumn(
            name.to_string(),
            s.fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", "),
        )
    })?;
    let a = b.column(i).as_ref();
    fn prim<T: ArrowPrimitiveType>(
        a: &dyn Array,
        f: impl Fn(T::Native) -> f64,
    ) -> Vec<Option<f64>> {
        a.as_primitive::<T>().iter().map(|v| v.map(&f)).collect()
    }
    Ok(match a.data_type() {
        DataType::Int8 => prim::<Int8Type>(a, |v| v as f64),
        DataType::Int16 => prim::<Int16Type>(a, |v| v as f64),
        DataType::Int32 => prim::<Int32Type>(a, |v| v as f64),
        DataType::Int64 => prim::<Int64Type>(a, |v| v as f64),
        DataType::UInt8 => prim::<UInt8Type>(a, |v| v as f64),
        DataType::UInt16 => prim::<UInt16Type>(a, |v| v as f64),
        DataType::UInt32 => prim::<UInt32Type>(a, |v| v as f64),
        DataType::UInt64 => prim::<UInt64Type>(a, |v| v as f64),
        DataType::Float32 => prim::<Float32Type>(a, |v| v as f64),
        DataType::Float64 => prim::<Float64Type>(a, |v| v),
        DataType::Boolean => a
            .as_boolean()
            .iter()
            .map(|v| v.map(|x| x as u8 as f64))
            .collect(),
        other => {
            return Err(Error::NotNumeric {
                column: name.to_string(),
                dtype: other.to_string(),
            });
        }
    })
}

fn param<T: std::str::FromStr>(p: &BTreeMap<String, String>, k: &str) -> Result<Option<T>> {
    p.get(k)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| Error::Param(format!("{k}={v:?}: not a valid value")))
        })
        .transpose()
}

/// The parameters a learner takes.
pub fn params_of(algo: Algo) -> &'static [&'static str] {
    match algo {
        Algo::Linear => &[],
        Algo::Logistic => &["alpha"],
        Algo::Tree => &["max_depth", "min_samples_leaf", "min_samples_split", "task"],
    }
}

fn known_params(algo: Algo, p: &BTreeMap<String, String>) -> Result<()> {
    let allowed = params_of(algo);
    for k in p.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(Error::Param(format!(
                "`{k}` is not a parameter of {}; it takes: {}",
                algo.name(),
                if allowed.is_empty() {
                    "none".to_string()
                } else {
                    allowed.join(", ")
                }
            )));
        }
    }
    Ok(())
}

fn fit_err(algo: Algo, e: impl std::fmt::Display) -> Error {
    Error::Fit {
        algo: algo.name().into(),
        message: e.to_string(),
    }
}

/// Rows of features with missing values filled.
fn matrix(cols: &[Vec<Option<f64>>], fill: &[f64], n: usize) -> Vec<Vec<f64>> {
    (0..n)
        .map(|r| {
            cols.iter()
                .zip(fill)
                .map(|(c, f)| c[r].filter(|v| v.is_finite()).unwrap_or(*f))
                .collect()
        })
        .collect()
}

fn dense(rows: &[Vec<f64>], width: usize) -> Result<DenseMatrix<f64>> {
    if rows.is_empty() {
        return Err(Error::Empty("use"));
    }
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    DenseMatrix::new(rows.len(), width, flat, false).map_err(|e| Error::Artifact(e.to_string()))
}

/// Train a model on the rows of `batch`.
pub fn train(batch: &RecordBatch, spec: &Spec) -> Result<Model> {
    known_params(spec.algo, &spec.params)?;
    if spec.features.is_empty() {
        return Err(Error::Param("no feature columns to train on".into()));
    }
    let n = batch.num_rows();
    if n == 0 {
        return Err(Error::Empty("train on"));
    }
    let label = column_f64(batch, &spec.label)?;
    let y: Vec<f64> = label
        .iter()
        .enumerate()
        .map(|(row, v)| {
            v.ok_or(Error::NullLabel {
                column: spec.label.clone(),
                row,
            })
        })
        .collect::<Result<_>>()?;
    let cols: Vec<Vec<Option<f64>>> = spec
        .features
        .iter()
        .map(|f| column_f64(batch, f))
        .collect::<Result<_>>()?;
    let fill: Vec<f64> = cols
        .iter()
        .map(|c| {
            let (s, k) = c
                .iter()
                .flatten()
                .filter(|v| v.is_finite())
                .fold((0.0, 0usize), |(s, k), v| (s + v, k + 1));
            if k == 0 { 0.0 } else { s / k as f64 }
        })
        .collect();
    let rows = matrix(&cols, &fill, n);
    let x = dense(&rows, cols.len())?;
    let classes = || -> Result<Vec<i64>> {
        y.iter()
            .map(|v| {
                if v.fract() == 0.0 {
                    Ok(*v as i64)
                } else {
                    Err(Error::Param(format!(
                        "label `{}` has value {v}: classification needs whole-number classes",
                        spec.label
                    )))
                }
            })
            .collect()
    };
    let (task, fitted) = match spec.algo {
        Algo::Linear => {
            let m = LinearRegression::fit(&x, &y, LinearRegressionParameters::default())
                .map_err(|e| fit_err(spec.algo, e))?;
            let w = m.coefficients();
            let weights = (0..cols.len())
                .map(|j| *smartcore::linalg::basic::arrays::Array::get(w, (j, 0)))
                .collect();
            (
                Task::Regression,
                Fitted::Linear {
                    intercept: *m.intercept(),
                    weights,
                },
            )
        }
        Algo::Logistic => {
            let yc = classes()?;
            if yc.iter().any(|c| *c != 0 && *c != 1) {
                return Err(Error::Param(format!(
                    "label `{}`: logistic regression needs classes 0 and 1",
                    spec.label
                )));
            }
            let mut p = LogisticRegressionParameters::<f64>::default();
            if let Some(a) = param::<f64>(&spec.params, "alpha")? {
                p.alpha = a;
            }
            let m = LogisticRegression::fit(&x, &yc, p).map_err(|e| fit_err(spec.algo, e))?;
            let w = m.coefficients();
            let weights = (0..cols.len())
                .map(|j| *smartcore::linalg::basic::arrays::Array::get(w, (0, j)))
                .collect();
            let intercept = *smartcore::linalg::basic::arrays::Array::get(m.intercept(), (0, 0));
            (Task::Classification, Fitted::Linear { intercept, weights })
        }
        Algo::Tree => {
            let task = match spec.params.get("task").map(|s| s.as_str()) {
                Some("regression") => Task::Regression,
                Some("classification") => Task::Classification,
                None if y.iter().all(|v| *v == 0.0 || *v == 1.0) => Task::Classification,
                None => Task::Regression,
                Some(other) => {
                    return Err(Error::Param(format!(
                        "task={other:?}: classification or regression"
                    )));
                }
            };
            let max_depth = param::<u16>(&spec.params, "max_depth")?;
            let min_leaf = param::<usize>(&spec.params, "min_samples_leaf")?.unwrap_or(1);
            let min_split = param::<usize>(&spec.params, "min_samples_split")?.unwrap_or(2);
            match task {
                Task::Classification => {
                    let p = DecisionTreeClassifierParameters {
                        max_depth,
                        min_samples_leaf: min_leaf,
                        min_samples_split: min_split,
                        seed: Some(spec.seed),
                        ..Default::default()
                    };
                    let yc = classes()?;
                    let tree = DecisionTreeClassifier::fit(&x, &yc, p)
                        .map_err(|e| fit_err(spec.algo, e))?;
                    let mut classes = yc;
                    classes.sort_unstable();
                    classes.dedup();
                    (task, Fitted::TreeClassifier { tree, classes })
                }
                Task::Regression => {
                    let p = DecisionTreeRegressorParameters {
                        max_depth,
                        min_samples_leaf: min_leaf,
                        min_samples_split: min_split,
                        seed: Some(spec.seed),
                    };
                    let m =
                        DecisionTreeRegressor::fit(&x, &y, p).map_err(|e| fit_err(spec.algo, e))?;
                    (task, Fitted::TreeRegressor(m))
                }
            }
        }
    };
    Ok(Model {
        format: FORMAT,
        algo: spec.algo,
        task,
        label: spec.label.clone(),
        features: spec.features.clone(),
        fill,
        params: spec.params.clone(),
        seed: spec.seed,
        fitted,
    })
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

impl Model {
    /// The artifact: deterministic JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Read an artifact written by [`Model::to_bytes`], refusing another format version.
    pub fn from_bytes(bytes: &[u8]) -> Result<Model> {
        let m: Model = serde_json::from_slice(bytes).map_err(|e| Error::Artifact(e.to_string()))?;
        if m.format != FORMAT {
            return Err(Error::Artifact(format!(
                "format {} is not supported (this build reads {FORMAT})",
                m.format
            )));
        }
        Ok(m)
    }

    /// One prediction per row: the value (regression) or the probability of class 1
    /// (classification).
    pub fn predict(&self, batch: &RecordBatch) -> Result<Vec<f64>> {
        let cols: Vec<Vec<Option<f64>>> = self
            .features
            .iter()
            .map(|f| column_f64(batch, f))
            .collect::<Result<_>>()?;
        let rows = matrix(&cols, &self.fill, batch.num_rows());
        Ok(match &self.fitted {
            Fitted::Linear { intercept, weights } => rows
                .iter()
                .map(|r| {
                    let z = intercept + r.iter().zip(weights).map(|(a, b)| a * b).sum::<f64>();
                    if self.task == Task::Classification {
                        sigmoid(z)
                    } else {
                        z
                    }
                })
                .collect(),
            Fitted::TreeClassifier { tree, classes } => {
                if rows.is_empty() {
                    return Ok(vec![]);
                }
                let x = dense(&rows, self.features.len())?;
                let p = tree
                    .predict_proba(&x)
                    .map_err(|e| Error::Artifact(e.to_string()))?;
                let one = classes.iter().position(|c| *c == 1);
                (0..rows.len())
                    .map(|i| match one {
                        Some(j) => *smartcore::linalg::basic::arrays::Array::get(&p, (i, j)),
                        None => 0.0,
                    })
                    .collect()
            }
            Fitted::TreeRegressor(t) => {
                if rows.is_empty() {
                    return Ok(vec![]);
                }
                let x = dense(&rows, self.features.len())?;
                t.predict(&x).map_err(|e| Error::Artifact(e.to_string()))?
            }
        })
    }

    /// Metrics of the predictions against the label column of `batch`: rmse and mae for
    /// regression; auc, accuracy (threshold 0.5) and logloss for classification.
    pub fn evaluate(&self, batch: &RecordBatch) -> Result<BTreeMap<String, f64>> {
        let label = column_f64(batch, &self.label)?;
        let pred = self.predict(batch)?;
        let pairs: Vec<(f64, f64)> = label
            .iter()
            .zip(&pred)
            .filter_map(|(y, p)| y.map(|y| (y, *p)))
            .collect();
        if pairs.is_empty() {
            return Err(Error::Empty("evaluate on"));
        }
        let n = pairs.len() as f64;
        let mut out = BTreeMap::new();
        match self.task {
            Task::Regression => {
                let se: f64 = pairs.iter().map(|(y, p)| (y - p) * (y - p)).sum();
                let ae: f64 = pairs.iter().map(|(y, p)| (y - p).abs()).sum();
                out.insert("rmse".into(), (se / n).sqrt());
                out.insert("mae".into(), ae / n);
            }
            Task::Classification => {
                let correct = pairs
                    .iter()
                    .filter(|(y, p)| (*p >= 0.5) == (*y >= 0.5))
                    .count();
                let eps = 1e-15;
                let ll: f64 = pairs
                    .iter()
                    .map(|(y, p)| {
                        let p = p.clamp(eps, 1.0 - eps);
                        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
                    })
                    .sum();
                out.insert("accuracy".into(), correct as f64 / n);
                out.insert("logloss".into(), ll / n);
                out.insert("auc".into(), auc(&pairs));
            }
        }
        Ok(out)
    }
}

/// Area under the ROC curve (ties counted half): the probability that a random positive
/// scores above a random negative. 0.5 when one class is absent.
pub fn auc(pairs: &[(f64, f64)]) -> f64 {
    let mut v: Vec<(f64, bool)> = pairs.iter().map(|(y, p)| (*p, *y >= 0.5)).collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|x| x.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    // Sum of positive ranks, averaging ranks over ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j < v.len() && v[j].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j + 1) as f64 / 2.0;
        rank_sum += avg * v[i..j].iter().filter(|x| x.1).count() as f64;
        i = j;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Float64Array, Int64Array};
    use std::sync::Arc;

    fn data(n: usize) -> RecordBatch {
        let x1: Vec<f64> = (0..n).map(|i| ((i * 37) % 101) as f64 / 10.0).collect();
        let x2: Vec<Option<f64>> = (0..n)
            .map(|i| (i % 13 != 0).then(|| ((i * 17) % 23) as f64))
            .collect();
        let y: Vec<i64> = x1
            .iter()
            .zip(&x2)
            .map(|(a, b)| (a + b.unwrap_or(11.0) / 3.0 > 8.0) as i64)
            .collect();
        let r: Vec<f64> = x1
            .iter()
            .zip(&x2)
            .map(|(a, b)| 2.0 * a - 0.5 * b.unwrap_or(11.0) + 3.0)
            .collect();
        RecordBatch::try_from_iter(vec![
            ("x1", Arc::new(Float64Array::from(x1)) as _),
            ("x2", Arc::new(Float64Array::from(x2)) as _),
            ("y", Arc::new(Int64Array::from(y)) as _),
            ("r", Arc::new(Float64Array::from(r)) as _),
        ])
        .unwrap()
    }

    fn spec(algo: Algo, label: &str) -> Spec {
        Spec {
            algo,
            label: label.into(),
            features: vec!["x1".into(), "x2".into()],
            params: BTreeMap::new(),
            seed: 7,
        }
    }

    #[test]
    fn learners_fit_and_artifacts_are_deterministic() {
        let b = data(400);
        let lin = train(&b, &spec(Algo::Linear, "r")).unwrap();
        let m = lin.evaluate(&b).unwrap();
        assert!(m["rmse"] < 2.0, "{m:?}");
        let log = train(&b, &spec(Algo::Logistic, "y")).unwrap();
        let m = log.evaluate(&b).unwrap();
        assert!(m["auc"] > 0.9 && m["accuracy"] > 0.8, "{m:?}");
        let mut s = spec(Algo::Tree, "y");
        s.params.insert("max_depth".into(), "4".into());
        let tree = train(&b, &s).unwrap();
        let m = tree.evaluate(&b).unwrap();
        assert!(m["accuracy"] > 0.9, "{m:?}");
        for (a, sp) in [
            (lin, spec(Algo::Linear, "r")),
            (log, spec(Algo::Logistic, "y")),
            (tree, s),
        ] {
            let again = train(&b, &sp).unwrap();
            assert_eq!(a.to_bytes(), again.to_bytes());
            let back = Model::from_bytes(&a.to_bytes()).unwrap();
            assert_eq!(back.predict(&b).unwrap(), a.predict(&b).unwrap());
        }
    }

    #[test]
    fn bad_input_is_named() {
        let b = data(50);
        let mut s = spec(Algo::Tree, "y");
        s.params.insert("depth".into(), "3".into());
        assert!(
            train(&b, &s)
                .unwrap_err()
                .to_string()
                .contains("`depth` is not a parameter")
        );
        let e = train(&b, &spec(Algo::Logistic, "r"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("whole-number classes"), "{e}");
        let e = train(&b, &spec(Algo::Linear, "nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("column `nope` is not in the dataset"), "{e}");
    }

    #[test]
    fn auc_counts_ties_half() {
        assert_eq!(auc(&[(1.0, 0.9), (0.0, 0.1)]), 1.0);
        assert_eq!(auc(&[(1.0, 0.1), (0.0, 0.9)]), 0.0);
        assert_eq!(auc(&[(1.0, 0.5), (0.0, 0.5)]), 0.5);
    }
}
