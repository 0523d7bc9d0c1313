//! A training set whose feature columns may still lie in the sweep's pieces.
//!
//! The sweep returns each feature as pieces (one per bucket swept) plus where each spine row
//! sits among them. Gathering a 2M-row, 21-feature result into whole new columns touched
//! 336 MB of fresh memory, and on the machines Quiver is measured on those first touches
//! (page faults zeroing pages) were most of that step's time. A [`TrainingSet`] keeps the pieces
//! and gathers on demand: the Parquet writer asks for one slice of a column at a time into a
//! buffer that is reused, so the reordered result never exists whole; [`TrainingSet::into_batch`]
//! gathers everything for callers that want a `RecordBatch`.

use std::ops::Range;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, PrimitiveArray, RecordBatch, StructArray, new_empty_array,
};
use datafusion::arrow::buffer::{BooleanBuffer, Buffer, NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Fields, Float64Type, Int64Type, SchemaRef,
};

use crate::{Error, Result};

/// Where each output row comes from; every row is drawn exactly once.
pub(crate) enum Order {
    /// Each piece's output rows, ascending (the block sweep's buckets list theirs so): a
    /// slice of the output takes a contiguous run of every piece, read front to back and
    /// scattered into a buffer small enough to stay in cache.
    Ascending(Vec<ScalarBuffer<u64>>),
    /// Each output row's (piece, row).
    Pos(Vec<(usize, usize)>),
}

impl Order {
    /// The order of `n` output rows given each piece's output row ids; every row must come
    /// from exactly one piece row.
    pub(crate) fn from_row_ids(ids: Vec<ScalarBuffer<u64>>, n: usize) -> Result<Order> {
        let count: usize = ids.iter().map(|r| r.len()).sum();
        let wrong = || Error::Internal(format!("join returned {count} rows for {n} spine rows"));
        if count != n || ids.iter().flatten().any(|&r| r as usize >= n) {
            return Err(wrong());
        }
        let ascending = ids.iter().all(|r| r.windows(2).all(|w| w[0] < w[1]));
        if ascending {
            let mut seen = vec![false; n];
            for &r in ids.iter().flatten() {
                if std::mem::replace(&mut seen[r as usize], true) {
                    return Err(wrong());
                }
            }
            return Ok(Order::Ascending(ids));
        }
        let mut pos = vec![(usize::MAX, 0); n];
        for (b, rid) in ids.iter().enumerate() {
            for (row, &r) in rid.iter().enumerate() {
                pos[r as usize] = (b, row);
            }
        }
        if pos.iter().any(|p| p.0 == usize::MAX) {
            return Err(wrong());
        }
        Ok(Order::Pos(pos))
    }

    fn len(&self) -> usize {
        match self {
            Order::Ascending(ids) => ids.iter().map(|r| r.len()).sum(),
            Order::Pos(p) => p.len(),
        }
    }

    /// For ascending pieces: the run of each piece's rows that lands in `off..off + len`.
    fn runs(ids: &[ScalarBuffer<u64>], off: usize, len: usize) -> Vec<Range<usize>> {
        let (lo, hi) = (off as u64, (off + len) as u64);
        ids.iter()
            .map(|r| r.partition_point(|&x| x < lo)..r.partition_point(|&x| x < hi))
            .collect()
    }

    /// (piece, row) of output rows `off..off + len`.
    fn positions(&self, off: usize, len: usize) -> Vec<(usize, usize)> {
        match self {
            Order::Pos(p) => p[off..off + len].to_vec(),
            Order::Ascending(ids) => {
                let mut pos = vec![(0, 0); len];
                for (b, run) in Order::runs(ids, off, len).into_iter().enumerate() {
                    for i in run {
                        pos[ids[b][i] as usize - off] = (b, i);
                    }
                }
                pos
            }
        }
    }
}

/// One output column: whole, in chunks, or pieces and the order to read them in.
#[derive(Clone)]
pub(crate) enum Column {
    Ready(ArrayRef),
    /// Arrays of one type whose rows follow each other (a refresh's stored rows, then its
    /// new ones, each finished as it is): joined only a slice at a time, as they are written,
    /// so the whole column is never copied into new memory.
    Chunks(Arc<Vec<ArrayRef>>),
    Scattered {
        pieces: Arc<Vec<ArrayRef>>,
        order: Arc<Order>,
    },
}

impl Column {
    /// A column of rows drawn from any pieces by (piece, row).
    pub(crate) fn from_positions(pieces: Vec<ArrayRef>, pos: Vec<(usize, usize)>) -> Column {
        Column::Scattered {
            pieces: Arc::new(pieces),
            order: Arc::new(Order::Pos(pos)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Column::Ready(a) => a.len(),
            Column::Chunks(chunks) => chunks.iter().map(|c| c.len()).sum(),
            Column::Scattered { order, .. } => order.len(),
        }
    }

    pub(crate) fn data_type(&self) -> &DataType {
        match self {
            Column::Ready(a) => a.data_type(),
            Column::Chunks(pieces) | Column::Scattered { pieces, .. } => {
                pieces.first().map_or(&DataType::Null, |p| p.data_type())
            }
        }
    }

    /// Rows `off..off + len` as one array.
    pub(crate) fn slice(&self, off: usize, len: usize) -> Result<ArrayRef> {
        match self {
            Column::Ready(a) => Ok(a.slice(off, len)),
            Column::Chunks(chunks) => {
                let (mut at, end) = (0, off + len);
                let mut parts = Vec::new();
                for c in chunks.iter() {
                    let (from, to) = (off.max(at), end.min(at + c.len()));
                    if from < to {
                        parts.push(c.slice(from - at, to - from));
                    }
                    at += c.len();
                }
                match parts.as_slice() {
                    [one] => Ok(Arc::clone(one)),
                    [] => Ok(new_empty_array(self.data_type())),
                    _ => {
                        let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
                        Ok(datafusion::arrow::compute::concat(&refs)?)
                    }
                }
            }
            Column::Scattered { pieces, order } => {
                let parts: Vec<&dyn Array> = pieces.iter().map(|a| a.as_ref()).collect();
                gather(&parts, order, off, len)
            }
        }
    }

    /// The whole column as one array.
    pub(crate) fn array(&self) -> Result<ArrayRef> {
        self.slice(0, self.len())
    }

    /// A scattered struct without struct-level nulls as one column per child, in the same
    /// order; `None` for anything else.
    fn children(&self) -> Option<(Fields, Vec<Column>)> {
        let Column::Scattered { pieces, order } = self else {
            return None;
        };
        let DataType::Struct(fields) = pieces.first()?.data_type() else {
            return None;
        };
        let structs: Vec<&StructArray> = pieces.iter().map(|p| p.as_struct()).collect();
        if fields.is_empty() || structs.iter().any(|s| s.nulls().is_some()) {
            return None;
        }
        let kids = (0..fields.len())
            .map(|k| Column::Scattered {
                pieces: Arc::new(structs.iter().map(|s| Arc::clone(s.column(k))).collect()),
                order: Arc::clone(order),
            })
            .collect();
        Some((fields.clone(), kids))
    }
}

/// Output rows `off..off + len` of pieces read in `order`. Primitive columns are merged
/// without `interleave`'s per-element indirection; structs (the reuse states) child by
/// child, since arrow's generic path for nested types is several times slower.
fn gather(parts: &[&dyn Array], order: &Order, off: usize, len: usize) -> Result<ArrayRef> {
    let Some(first) = parts.first() else {
        return Err(Error::Internal("a scattered column without pieces".into()));
    };
    match first.data_type() {
        DataType::Float64 => Ok(gather_primitive::<Float64Type>(parts, order, off, len)),
        DataType::Int64 => Ok(gather_primitive::<Int64Type>(parts, order, off, len)),
        DataType::Struct(fields) => {
            let structs: Vec<&StructArray> = parts.iter().map(|p| p.as_struct()).collect();
            if structs.iter().any(|s| s.nulls().is_some()) {
                return Ok(interleave(parts, &order.positions(off, len))?);
            }
            let children = (0..fields.len())
                .map(|c| {
                    let col: Vec<&dyn Array> =
                        structs.iter().map(|s| s.column(c).as_ref()).collect();
                    gather(&col, order, off, len)
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Arc::new(StructArray::try_new(
                fields.clone(),
                children,
                None,
            )?))
        }
        _ => Ok(interleave(parts, &order.positions(off, len))?),
    }
}

fn gather_primitive<T: ArrowPrimitiveType>(
    parts: &[&dyn Array],
    order: &Order,
    off: usize,
    len: usize,
) -> ArrayRef {
    let arrs: Vec<&PrimitiveArray<T>> = parts.iter().map(|p| p.as_primitive::<T>()).collect();
    let mut values: Vec<T::Native> = vec![T::Native::default(); len];
    let has_nulls = arrs.iter().any(|a| a.null_count() > 0);
    // Validity is gathered as bits OR-ed in place, without a branch per row: whether a window
    // was empty is a coin toss for short windows, and a branch on it mispredicts half the time.
    let mut valid = vec![0u8; if has_nulls { len.div_ceil(8) } else { 0 }];
    match order {
        Order::Ascending(ids) => {
            for (b, run) in Order::runs(ids, off, len).into_iter().enumerate() {
                let (ids, vals) = (&ids[b][run.clone()], &arrs[b].values()[run.clone()]);
                for (&r, &v) in ids.iter().zip(vals) {
                    values[r as usize - off] = v;
                }
                if has_nulls {
                    let bit = |k: usize| arrs[b].is_valid(run.start + k) as u8;
                    for (k, &r) in ids.iter().enumerate() {
                        let d = r as usize - off;
                        valid[d >> 3] |= bit(k) << (d & 7);
                    }
                }
            }
        }
        Order::Pos(pos) => {
            for (k, &(b, r)) in pos[off..off + len].iter().enumerate() {
                values[k] = arrs[b].values()[r];
                if has_nulls {
                    valid[k >> 3] |= (arrs[b].is_valid(r) as u8) << (k & 7);
                }
            }
        }
    }
    let nulls =
        has_nulls.then(|| NullBuffer::new(BooleanBuffer::new(Buffer::from_vec(valid), 0, len)));
    Arc::new(
        PrimitiveArray::<T>::new(values.into(), nulls).with_data_type(parts[0].data_type().clone()),
    )
}

/// Whole columns, gathered in parallel; each column's pieces are released as soon as it is
/// done (when nothing else holds them), so the result does not double the memory.
/// A struct column (a reuse state, up to eight children) is gathered child by child, so the
/// cores share one wide state instead of one core taking it whole while the other finishes a
/// one-child count.
pub(crate) fn gather_all(columns: Vec<Column>) -> Result<Vec<ArrayRef>> {
    let mut items = Vec::with_capacity(columns.len());
    // per column: `None` when it is one item, else its struct fields (one item per child)
    let mut shapes = Vec::with_capacity(columns.len());
    for c in columns {
        match c.children() {
            Some((fields, kids)) => {
                items.extend(kids);
                shapes.push(Some(fields));
            }
            None => {
                items.push(c);
                shapes.push(None);
            }
        }
    }
    let mut done = on_cores(
        items,
        |c| c.array(),
        || Error::Internal("a column gather panicked".into()),
    )?
    .into_iter();
    let missing = || Error::Internal("a gathered column went missing".into());
    shapes
        .into_iter()
        .map(|shape| match shape {
            None => done.next().ok_or_else(missing),
            Some(fields) => {
                let children: Vec<ArrayRef> = done.by_ref().take(fields.len()).collect();
                if children.len() != fields.len() {
                    return Err(missing());
                }
                Ok(Arc::new(StructArray::try_new(fields, children, None)?) as ArrayRef)
            }
        })
        .collect()
}

/// `f` over `items` on one thread per core, the results in item order. Each thread takes the
/// next item not yet taken: a training set's columns differ in cost (keys and counts are
/// dictionary-encoded, floats are not), and dealing them out in turn left one core idle
/// while the other finished.
pub(crate) fn on_cores<T: Send, R: Send, E: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> std::result::Result<R, E> + Sync,
    panicked: impl Fn() -> E,
) -> std::result::Result<Vec<R>, E> {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = items.len();
    // each item taken exactly once, by the index a thread draws
    let items: Vec<Mutex<Option<T>>> = items.into_iter().map(|x| Mutex::new(Some(x))).collect();
    let next = AtomicUsize::new(0);
    let (f, items, next) = (&f, &items, &next);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.min(n))
            .map(|_| {
                scope.spawn(move || {
                    let mut done = Vec::new();
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items
                            .get(j)
                            .and_then(|m| m.lock().unwrap_or_else(|e| e.into_inner()).take())
                        else {
                            return Ok(done);
                        };
                        done.push((j, f(item)?));
                    }
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for h in handles {
            all.extend(h.join().map_err(|_| panicked())??);
        }
        all.sort_by_key(|(j, _)| *j);
        Ok(all.into_iter().map(|(_, r)| r).collect())
    })
}

/// `(offset, length)` of consecutive spans of at most `step` rows covering `rows`; one empty
/// span when there are none, so a writer still writes the (empty) table once.
pub(crate) fn spans(rows: usize, step: usize) -> impl Iterator<Item = (usize, usize)> {
    let n = rows.div_ceil(step).max(1);
    (0..n).map(move |k| (k * step, step.min(rows - k * step)))
}

/// A result's columns, read in slices: what the output writers take.
pub trait Columns: Sync {
    /// The columns' schema.
    fn schema(&self) -> SchemaRef;
    /// Rows in every column.
    fn num_rows(&self) -> usize;
    /// Rows `off..off + len` of column `i`.
    fn column_slice(&self, i: usize, off: usize, len: usize) -> Result<ArrayRef>;
    /// Rows `off..off + len` of every column.
    fn slice_batch(&self, off: usize, len: usize) -> Result<RecordBatch> {
        let cols = (0..self.schema().fields().len())
            .map(|i| self.column_slice(i, off, len))
            .collect::<Result<Vec<_>>>()?;
        Ok(RecordBatch::try_new(self.schema(), cols)?)
    }
}

impl Columns for RecordBatch {
    fn schema(&self) -> SchemaRef {
        RecordBatch::schema(self)
    }
    fn num_rows(&self) -> usize {
        RecordBatch::num_rows(self)
    }
    fn column_slice(&self, i: usize, off: usize, len: usize) -> Result<ArrayRef> {
        Ok(self.column(i).slice(off, len))
    }
}

/// A training set: the spine's columns, then the features, some still in pieces.
pub struct TrainingSet {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
}

impl TrainingSet {
    pub(crate) fn new(schema: SchemaRef, columns: Vec<Column>, rows: usize) -> Result<TrainingSet> {
        if columns.len() != schema.fields().len() || columns.iter().any(|c| c.len() != rows) {
            return Err(Error::Internal(
                "a training set's columns do not match its schema or row count".into(),
            ));
        }
        Ok(TrainingSet {
            schema,
            columns,
            rows,
        })
    }

    /// The schema: the spine's columns, then the features.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Rows: one per spine row.
    pub fn num_rows(&self) -> usize {
        self.rows
    }

    /// Columns: the spine's and the features'.
    pub fn num_columns(&self) -> usize {
        self.columns.len()
    }

    /// Every column gathered, in parallel.
    pub fn into_batch(self) -> Result<RecordBatch> {
        let cols = gather_all(self.columns)?;
        if cols.is_empty() {
            return Ok(RecordBatch::new_empty(self.schema));
        }
        Ok(RecordBatch::try_new(self.schema, cols)?)
    }
}

impl From<RecordBatch> for TrainingSet {
    fn from(b: RecordBatch) -> TrainingSet {
        TrainingSet {
            schema: b.schema(),
            rows: b.num_rows(),
            columns: b.columns().iter().cloned().map(Column::Ready).collect(),
        }
    }
}

impl Columns for TrainingSet {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
    fn num_rows(&self) -> usize {
        self.rows
    }
    fn column_slice(&self, i: usize, off: usize, len: usize) -> Result<ArrayRef> {
        if len == 0 {
            return Ok(new_empty_array(self.schema.field(i).data_type()));
        }
        self.columns[i].slice(off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    /// Pieces whose rows are ascending output rows, sliced anywhere, against the same rows
    /// picked one by one.
    #[test]
    fn slices_of_ascending_pieces_equal_the_rows_they_name() {
        let n = 70_001;
        // three pieces dealt unevenly, each listing its rows ascending
        let piece_of = |r: usize| (r * 7919 % 13 % 3) as u64;
        let ids: Vec<Vec<u64>> = (0..3)
            .map(|p| {
                (0..n as u64)
                    .filter(|&r| piece_of(r as usize) == p)
                    .collect()
            })
            .collect();
        let value = |r: u64| (!r.is_multiple_of(11)).then_some(r as f64 * 0.5);
        let pieces: Vec<ArrayRef> = ids
            .iter()
            .map(|rs| Arc::new(Float64Array::from_iter(rs.iter().map(|&r| value(r)))) as ArrayRef)
            .collect();
        let order =
            Order::from_row_ids(ids.into_iter().map(ScalarBuffer::from).collect(), n).unwrap();
        assert!(matches!(order, Order::Ascending(_)));
        let col = Column::Scattered {
            pieces: Arc::new(pieces),
            order: Arc::new(order),
        };
        let expected = Float64Array::from_iter((0..n as u64).map(value));
        assert_eq!(
            col.array().unwrap().as_primitive::<Float64Type>(),
            &expected
        );
        for (off, len) in [(0, 1), (5, 16_384), (16_383, 3), (n - 9, 9), (40_000, 0)] {
            let got = col.slice(off, len).unwrap();
            assert_eq!(
                got.as_primitive::<Float64Type>(),
                &expected.slice(off, len),
                "{off}+{len}"
            );
        }
    }

    #[test]
    fn row_ids_that_miss_or_repeat_a_row_are_refused() {
        let ids = |v: Vec<Vec<u64>>| v.into_iter().map(ScalarBuffer::from).collect::<Vec<_>>();
        assert!(Order::from_row_ids(ids(vec![vec![0, 2], vec![1]]), 3).is_ok());
        // out of order within a piece: read by position instead
        let o = Order::from_row_ids(ids(vec![vec![2, 0], vec![1]]), 3).unwrap();
        assert_eq!(o.positions(0, 3), vec![(0, 1), (1, 0), (0, 0)]);
        for bad in [
            vec![vec![0, 1], vec![1]],
            vec![vec![0, 3], vec![1]],
            vec![vec![0], vec![1]],
        ] {
            assert!(Order::from_row_ids(ids(bad.clone()), 3).is_err(), "{bad:?}");
        }
        assert!(Order::from_row_ids(ids(vec![vec![1, 0], vec![1]]), 3).is_err());
    }

    /// States (structs) gathered child by child beside plain columns equal arrow's
    /// `interleave` of the same rows, and a struct with nulls still gathers whole.
    #[test]
    fn struct_columns_gather_child_by_child() {
        let state = |n: Vec<i64>, v: Vec<Option<f64>>, nulls: Option<NullBuffer>| -> ArrayRef {
            let fields = Fields::from(vec![
                Field::new("n", DataType::Int64, false),
                Field::new("v", DataType::Float64, true),
            ]);
            let kids: Vec<ArrayRef> = vec![
                Arc::new(Int64Array::from(n)),
                Arc::new(Float64Array::from(v)),
            ];
            Arc::new(StructArray::try_new(fields, kids, nulls).unwrap())
        };
        let pos = vec![(1, 1), (0, 0), (0, 2), (1, 0), (0, 1)];
        let a = vec![
            state(vec![1, 2, 3], vec![Some(1.0), None, Some(3.0)], None),
            state(vec![4, 5], vec![Some(4.0), Some(5.0)], None),
        ];
        let with_nulls = vec![
            state(
                vec![1, 2, 3],
                vec![Some(1.0), None, Some(3.0)],
                Some(vec![true, false, true].into()),
            ),
            state(vec![4, 5], vec![None, Some(5.0)], None),
        ];
        let plain: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![7, 8, 9])),
            Arc::new(Int64Array::from(vec![10, 11])),
        ];
        let expect = |pieces: &[ArrayRef]| {
            let refs: Vec<&dyn Array> = pieces.iter().map(|p| p.as_ref()).collect();
            interleave(&refs, &pos).unwrap()
        };
        let want = [expect(&a), expect(&plain), expect(&with_nulls)];
        let got = gather_all(vec![
            Column::from_positions(a, pos.clone()),
            Column::from_positions(plain, pos.clone()),
            Column::from_positions(with_nulls, pos.clone()),
        ])
        .unwrap();
        assert_eq!(got.len(), 3);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.as_ref(), w.as_ref());
        }
    }

    #[test]
    fn positions_gather_any_type_and_tables_write_slices() {
        let pieces: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![Some("a"), None])),
            Arc::new(StringArray::from(vec!["b", "c"])),
        ];
        let col = Column::from_positions(pieces, vec![(1, 1), (0, 0), (0, 1), (1, 0)]);
        let ints = Column::from_positions(
            vec![
                Arc::new(Int64Array::from(vec![1, 2])),
                Arc::new(Int64Array::from(vec![3, 4])),
            ],
            vec![(1, 1), (0, 0), (0, 1), (1, 0)],
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("s", DataType::Utf8, true),
            Field::new("i", DataType::Int64, true),
        ]));
        let t = TrainingSet::new(schema, vec![col, ints], 4).unwrap();
        let b = t.slice_batch(1, 3).unwrap();
        assert_eq!(
            b.column(0).as_string::<i32>(),
            &StringArray::from(vec![Some("a"), None, Some("b")])
        );
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![1, 2, 3])
        );
        let all = t.into_batch().unwrap();
        assert_eq!(
            all.column(1).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![4, 1, 2, 3])
        );
    }

    /// A column in chunks, sliced anywhere (within a chunk, across several, empty), against
    /// the chunks joined.
    #[test]
    fn chunks_slice_as_the_joined_column() {
        let chunks: Vec<ArrayRef> = vec![
            Arc::new(Float64Array::from(vec![Some(1.0), None, Some(3.0)])),
            Arc::new(Float64Array::from(Vec::<f64>::new())),
            Arc::new(Float64Array::from(vec![Some(4.0)])),
            Arc::new(Float64Array::from(vec![None, Some(6.0), Some(7.0), None])),
        ];
        let refs: Vec<&dyn Array> = chunks.iter().map(|a| a.as_ref()).collect();
        let whole = datafusion::arrow::compute::concat(&refs).unwrap();
        let col = Column::Chunks(Arc::new(chunks));
        assert_eq!(col.len(), 8);
        assert_eq!(col.data_type(), &DataType::Float64);
        for off in 0..=8 {
            for len in 0..=8 - off {
                assert_eq!(
                    col.slice(off, len).unwrap().as_ref(),
                    whole.slice(off, len).as_ref(),
                    "rows {off}..{}",
                    off + len
                );
            }
        }
        let all = gather_all(vec![col]).unwrap();
        assert_eq!(all[0].as_ref(), whole.as_ref());
    }
}
