//! PromQL evaluation over the embedded store, with Prometheus' semantics: 5-minute lookback and staleness,
//! extrapolated rate/increase, vector matching, aggregations and classic histogram quantiles. Parsing is
//! promql-parser's; this module adds error positions and the evaluator.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    self, AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

use crate::query_limits::{Meter, QueryLimits};
use crate::tsdb::{is_stale, Labels, SeriesData, Tsdb};

/// How far back an instant selector looks for a sample (Prometheus' default `--query.lookback-delta`).
pub const LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// The step of a subquery that names none (Prometheus' default evaluation interval).
const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;
/// Most points a range query may return per series, as Prometheus refuses more than 11,000.
pub const MAX_POINTS: i64 = 11_000;

/// A query that could not run.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum QueryError {
    /// The text is not PromQL; `position` is the 1-based character where it stops making sense.
    #[error("parse error at char {position}: {message}")]
    Parse { position: usize, message: String },
    #[error("{0}")]
    Execution(String),
    #[error("{0}")]
    BadData(String),
    /// The query ran past its timeout.
    #[error("{0}")]
    Timeout(String),
    /// The caller cancelled the query (its client went away).
    #[error("{0}")]
    Canceled(String),
}

impl QueryError {
    /// Prometheus' `errorType` for the API.
    pub fn kind(&self) -> &'static str {
        match self {
            QueryError::Parse { .. } | QueryError::BadData(_) => "bad_data",
            QueryError::Execution(_) => "execution",
            QueryError::Timeout(_) => "timeout",
            QueryError::Canceled(_) => "canceled",
        }
    }
}

fn exec<T>(msg: impl Into<String>) -> Result<T, QueryError> {
    Err(QueryError::Execution(msg.into()))
}

/// How deeply expressions may nest (operands of operators, arguments, parentheses, aggregations, subqueries):
/// evaluation recurses once per level, and a query or an alerting rule must never exhaust a thread's stack.
/// Written queries stay far below it; `1+1+…` with a thousand terms does not.
pub const MAX_DEPTH: usize = 128;

/// The most operators and opening brackets a query may hold before it is parsed at all.
pub const MAX_OPERATORS: usize = 1_000;

/// The longest query text accepted; Prometheus' own limit is the HTTP request's size.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// Parses a query; a syntax error names the character where the longest sensible prefix ends. A query nested more
/// deeply than [`MAX_DEPTH`] is refused with the position where it gets too deep.
pub fn parse(query: &str) -> Result<Expr, QueryError> {
    if query.len() > MAX_QUERY_BYTES {
        return Err(QueryError::BadData(format!(
            "the query is {} bytes long; at most {MAX_QUERY_BYTES} are accepted",
            query.len()
        )));
    }
    // The parser itself checks types recursively over the whole tree as it builds it, and drops a half-built tree
    // recursively on a syntax error: a text with more operators and brackets than any sane query is refused before
    // it gets there. (Such chains nest, so they would be refused below anyway.)
    let operators = operator_count(query);
    if operators > MAX_OPERATORS {
        return Err(QueryError::Parse {
            position: deep_position(query),
            message: format!(
                "{operators} operators and brackets; at most {MAX_OPERATORS} are allowed, and expressions may nest at most {MAX_DEPTH} levels"
            ),
        });
    }
    let expr =
        parser::parse(query).map_err(|message| QueryError::Parse { position: error_position(query), message })?;
    let depth = depth(&expr);
    if depth > MAX_DEPTH {
        let position = deep_position(query);
        let err = QueryError::Parse {
            position,
            message: format!(
                "expressions nested {depth} deep; at most {MAX_DEPTH} levels are allowed (split it into recording rules or fewer operators)"
            ),
        };
        dismantle(expr);
        return Err(err);
    }
    Ok(expr)
}

/// How many operators and opening brackets a query holds, counted on its tokens (so nothing inside a string
/// counts).
fn operator_count(query: &str) -> usize {
    use lrpar::{Lexeme, Lexer};
    let Ok(lexer) = parser::lexer(query) else { return 0 };
    lexer
        .iter()
        .filter_map(|l| l.ok())
        .filter(|l| {
            let text = &query[l.span().start()..l.span().end()];
            (text.len() == 1 && "+-*/%^([<>".contains(text))
                || matches!(text, "and" | "or" | "unless" | "==" | "!=" | ">=" | "<=")
        })
        .count()
}

/// The children of an expression node.
fn children(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Aggregate(a) => std::iter::once(a.expr.as_ref()).chain(a.param.as_deref()).collect(),
        Expr::Unary(u) => vec![&u.expr],
        Expr::Binary(b) => vec![&b.lhs, &b.rhs],
        Expr::Paren(p) => vec![&p.expr],
        Expr::Subquery(s) => vec![&s.expr],
        Expr::Call(c) => c.args.args.iter().map(|a| a.as_ref()).collect(),
        _ => Vec::new(),
    }
}

/// How deeply an expression nests, counted without recursion (so that any depth can be measured).
pub fn depth(e: &Expr) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(e, 1usize)];
    while let Some((e, d)) = stack.pop() {
        deepest = deepest.max(d);
        stack.extend(children(e).into_iter().map(|c| (c, d + 1)));
    }
    deepest
}

/// Drops an expression without recursion: the boxes are taken apart one level at a time, so that dropping an
/// expression too deep to evaluate cannot exhaust the stack either.
fn dismantle(e: Expr) {
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::Aggregate(a) => {
                stack.push(*a.expr);
                stack.extend(a.param.map(|p| *p));
            }
            Expr::Unary(u) => stack.push(*u.expr),
            Expr::Binary(b) => {
                stack.push(*b.lhs);
                stack.push(*b.rhs);
            }
            Expr::Paren(p) => stack.push(*p.expr),
            Expr::Subquery(s) => stack.push(*s.expr),
            Expr::Call(c) => stack.extend(c.args.args.into_iter().map(|a| *a)),
            _ => {}
        }
    }
}

/// Roughly where a query gets too deep: the character after which as many operators and open brackets as
/// [`MAX_DEPTH`] have been seen.
fn deep_position(query: &str) -> usize {
    let mut seen = 0;
    for (i, c) in query.chars().enumerate() {
        if matches!(c, '(' | '+' | '-' | '*' | '/' | '%' | '^' | '[') {
            seen += 1;
            if seen >= MAX_DEPTH {
                return i + 1;
            }
        }
    }
    1
}

/// Where a query stops parsing: the end of the longest token prefix that some completion (an operand, closing
/// brackets) turns into a valid query. promql-parser reports syntax errors without a position.
fn error_position(query: &str) -> usize {
    // The search below parses once per token and completion: fine for a query someone typed, too slow for a long
    // machine-made one, which is reported at its end.
    if query.len() > 512 {
        return query.chars().count();
    }
    let Ok(lexer) = parser::lexer(query) else {
        // The lexer failed: the error is at the first character it could not take; find it by prefix.
        let chars: Vec<(usize, char)> = query.char_indices().collect();
        let mut good = 0;
        for (i, (at, _)) in chars.iter().enumerate() {
            if parser::lexer(&query[..*at]).is_ok() || i == 0 {
                good = i;
            }
        }
        return good + 1;
    };
    use lrpar::{Lexeme, Lexer};
    let spans: Vec<(usize, usize)> =
        lexer.iter().filter_map(|l| l.ok()).map(|l| (l.span().start(), l.span().end())).collect();
    let completions = ["", " x", ")", " x)", "))", " x))", "]", "}", "\"\"}", "[1m])", ")))", " x)))"];
    let mut best = 0;
    for &(_, end) in &spans {
        let prefix = &query[..end];
        let parses = |c: &&str| match parser::parse(&format!("{prefix}{c}")) {
            Ok(e) => {
                dismantle(e);
                true
            }
            Err(_) => false,
        };
        if completions.iter().any(parses) {
            best = end;
        }
    }
    query[..best].chars().count() + 1
}

/// A query's result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(f64),
    String(String),
    Vector(Vec<Sample>),
    Matrix(Vec<SeriesData>),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub v: f64,
}

/// Evaluates queries against a store.
pub struct Engine<'a> {
    db: &'a Tsdb,
    /// Query start and end, for `@ start()` / `@ end()`.
    start: i64,
    end: i64,
    /// Data read once per selector for the whole query (keyed by the selector's address in the AST).
    cache: std::cell::RefCell<HashMap<usize, std::rc::Rc<Vec<SeriesData>>>>,
    limits: QueryLimits,
    /// What the running query holds, and its deadline.
    meter: Meter,
}

fn samples_in(data: &[SeriesData]) -> usize {
    data.iter().map(|s| s.samples.len()).sum()
}

/// Milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn ms(d: &Duration) -> i64 {
    d.as_millis() as i64
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        Some(Offset::Pos(d)) => ms(d),
        Some(Offset::Neg(d)) => -ms(d),
        None => 0,
    }
}

fn name_matchers(vs: &VectorSelector) -> Vec<Vec<Matcher>> {
    let mut base = vs.matchers.matchers.clone();
    if let Some(n) = &vs.name {
        if !base.iter().any(|m| m.name == "__name__") {
            base.push(Matcher::new(MatchOp::Equal, "__name__", n));
        }
    }
    if vs.matchers.or_matchers.is_empty() {
        vec![base]
    } else {
        vs.matchers
            .or_matchers
            .iter()
            .map(|set| {
                let mut s = set.clone();
                s.extend(base.iter().cloned());
                s
            })
            .collect()
    }
}

impl<'a> Engine<'a> {
    /// An engine with Prometheus' default limits (50 million samples, 2 minutes).
    pub fn new(db: &'a Tsdb) -> Engine<'a> {
        Engine::with_limits(db, QueryLimits::default())
    }

    /// An engine whose every query is bounded by `limits`.
    pub fn with_limits(db: &'a Tsdb, limits: QueryLimits) -> Engine<'a> {
        Engine { db, start: 0, end: 0, cache: Default::default(), meter: Meter::new(limits.clone()), limits }
    }

    /// Forgets the previous query's data and starts the clock and the sample count of a new one.
    fn begin(&mut self, start: i64, end: i64) {
        self.start = start;
        self.end = end;
        self.cache.borrow_mut().clear();
        self.meter = Meter::new(self.limits.clone());
    }

    /// An instant query at `t` (milliseconds).
    pub fn instant(&mut self, query: &str, t: i64) -> Result<Value, QueryError> {
        let expr = parse(query)?;
        self.begin(t, t);
        let v = self.eval(&expr, t)?;
        Ok(match v {
            Value::Vector(mut s) => {
                if !is_sorting(&expr) {
                    s.sort_by(|a, b| a.labels.cmp(&b.labels));
                }
                Value::Vector(s)
            }
            other => other,
        })
    }

    /// A range query: the expression evaluated at every step from `start` to `end` (milliseconds), as series.
    pub fn range(&mut self, query: &str, start: i64, end: i64, step: i64) -> Result<Value, QueryError> {
        if step <= 0 {
            return Err(QueryError::BadData("zero or negative query resolution step widths are not accepted".into()));
        }
        if end < start {
            return Err(QueryError::BadData("end timestamp must not be before start time".into()));
        }
        if (end - start) / step > MAX_POINTS {
            return Err(QueryError::BadData(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)".into(),
            ));
        }
        let expr = parse(query)?;
        match expr_type(&expr) {
            ValueType::Vector | ValueType::Scalar => {}
            k => {
                return Err(QueryError::BadData(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    k.name()
                )))
            }
        }
        self.begin(start, end);
        let mut series: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
        let mut t = start;
        while t <= end {
            match self.eval(&expr, t)? {
                Value::Scalar(v) => {
                    self.meter.hold(1)?;
                    series.entry(Labels::default()).or_default().push((t, v))
                }
                Value::Vector(samples) => {
                    // The result grows with every step: it is held until the query ends.
                    self.meter.hold(samples.len())?;
                    for s in samples {
                        series.entry(s.labels).or_default().push((t, s.v));
                    }
                }
                _ => return exec("range query expression did not give a vector"),
            }
            t += step;
        }
        Ok(Value::Matrix(sorted_series(series)))
    }

    fn eval(&self, e: &Expr, t: i64) -> Result<Value, QueryError> {
        self.meter.check()?;
        match e {
            Expr::NumberLiteral(n) => Ok(Value::Scalar(n.val)),
            Expr::StringLiteral(s) => Ok(Value::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr, t),
            Expr::Unary(u) => match self.eval(&u.expr, t)? {
                Value::Scalar(v) => Ok(Value::Scalar(-v)),
                Value::Vector(s) => {
                    Ok(Value::Vector(s.into_iter().map(|x| Sample { labels: drop_name(&x.labels), v: -x.v }).collect()))
                }
                _ => exec("unary minus needs a scalar or an instant vector"),
            },
            Expr::VectorSelector(vs) => Ok(Value::Vector(self.instant_selector(vs, t)?)),
            Expr::MatrixSelector(m) => Ok(Value::Matrix(self.range_selector(m, t)?)),
            Expr::Subquery(sq) => Ok(Value::Matrix(self.subquery(sq, t)?)),
            Expr::Aggregate(a) => self.aggregate(a, t),
            Expr::Binary(b) => self.binary(b, t),
            Expr::Call(c) => self.call(c, t),
            Expr::Extension(_) => exec("extension expressions are not supported"),
        }
    }

    fn at_time(&self, at: &Option<AtModifier>, t: i64) -> i64 {
        match at {
            Some(AtModifier::Start) => self.start,
            Some(AtModifier::End) => self.end,
            Some(AtModifier::At(st)) => st.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
            None => t,
        }
    }

    /// All data a selector can need in this query, read once.
    fn data(&self, key: usize, vs: &VectorSelector, window: i64) -> Result<std::rc::Rc<Vec<SeriesData>>, QueryError> {
        if let Some(d) = self.cache.borrow().get(&key) {
            return Ok(d.clone());
        }
        let off = offset_ms(&vs.offset);
        let (lo, hi) = match &vs.at {
            Some(_) => {
                let at = self.at_time(&vs.at, self.start);
                (at - off - window, at - off)
            }
            None => (self.start - off - window, self.end - off),
        };
        let mut all: Vec<SeriesData> = Vec::new();
        for set in name_matchers(vs) {
            // The read stops as soon as it would not fit in the budget: a selector over everything fails fast.
            let room = self.meter.room().saturating_sub(samples_in(&all));
            all.extend(self.db.select_at_most(&set, lo, hi, room).ok_or_else(|| self.meter.exceeded())?);
        }
        if vs.matchers.or_matchers.len() > 1 {
            all.sort_by(|a, b| a.labels.cmp(&b.labels));
            all.dedup_by(|a, b| a.labels == b.labels);
        }
        // Cached for the whole query: held until it ends.
        self.meter.hold(samples_in(&all))?;
        let d = std::rc::Rc::new(all);
        self.cache.borrow_mut().insert(key, d.clone());
        Ok(d)
    }

    fn instant_selector(&self, vs: &VectorSelector, t: i64) -> Result<Vec<Sample>, QueryError> {
        let ref_t = self.at_time(&vs.at, t) - offset_ms(&vs.offset);
        // Subqueries evaluate selectors before the query's start: read from the earliest time they can ask for.
        let data = self.data_for(vs, LOOKBACK_MS, ref_t)?;
        Ok(data
            .iter()
            .filter_map(|s| latest(&s.samples, ref_t).map(|(_, v)| Sample { labels: s.labels.clone(), v }))
            .collect())
    }

    /// Selector data covering `[ref_t - window, ref_t]`: the cached read when it covers it, else a fresh read.
    fn data_for(
        &self,
        vs: &VectorSelector,
        window: i64,
        ref_t: i64,
    ) -> Result<std::rc::Rc<Vec<SeriesData>>, QueryError> {
        let key = vs as *const VectorSelector as usize;
        let off = offset_ms(&vs.offset);
        let cached_lo = self.start - off - window;
        if vs.at.is_none() && ref_t - window < cached_lo {
            // Read for this step only.
            let mut all = Vec::new();
            for set in name_matchers(vs) {
                let room = self.meter.room().saturating_sub(samples_in(&all));
                all.extend(
                    self.db.select_at_most(&set, ref_t - window, ref_t, room).ok_or_else(|| self.meter.exceeded())?,
                );
            }
            return Ok(std::rc::Rc::new(all));
        }
        self.data(key, vs, window)
    }

    fn range_selector(&self, m: &MatrixSelector, t: i64) -> Result<Vec<SeriesData>, QueryError> {
        let range = ms(&m.range);
        let ref_t = self.at_time(&m.vs.at, t) - offset_ms(&m.vs.offset);
        let data = self.data_for(&m.vs, range, ref_t)?;
        let mut out = Vec::new();
        for s in data.iter() {
            let lo = s.samples.partition_point(|(ts, _)| *ts < ref_t - range);
            let hi = s.samples.partition_point(|(ts, _)| *ts <= ref_t);
            let samples: Vec<(i64, f64)> = s.samples[lo..hi].iter().copied().filter(|(_, v)| !is_stale(*v)).collect();
            if !samples.is_empty() {
                out.push(SeriesData { labels: s.labels.clone(), samples });
            }
        }
        self.meter.peek(samples_in(&out))?;
        Ok(out)
    }

    fn subquery(&self, sq: &SubqueryExpr, t: i64) -> Result<Vec<SeriesData>, QueryError> {
        let step = sq.step.as_ref().map_or(DEFAULT_SUBQUERY_STEP_MS, ms).max(1);
        let ref_t = self.at_time(&sq.at, t) - offset_ms(&sq.offset);
        let start = ref_t - ms(&sq.range);
        let mut first = start - start.rem_euclid(step);
        if first < start {
            first += step;
        }
        let mut series: HashMap<Labels, Vec<(i64, f64)>> = HashMap::new();
        // Points are held while the subquery builds them, and counted against the query's budget.
        let mut held = 0;
        let built = (|| {
            let mut at = first;
            while at <= ref_t {
                match self.eval(&sq.expr, at)? {
                    Value::Vector(v) => {
                        self.meter.hold(v.len())?;
                        held += v.len();
                        for s in v {
                            series.entry(s.labels).or_default().push((at, s.v));
                        }
                    }
                    Value::Scalar(v) => {
                        self.meter.hold(1)?;
                        held += 1;
                        series.entry(Labels::default()).or_default().push((at, v))
                    }
                    _ => return exec("subquery needs an instant vector or scalar"),
                }
                at += step;
            }
            Ok(())
        })();
        self.meter.release(held);
        built?;
        Ok(sorted_series(series))
    }

    fn vector(&self, e: &Expr, t: i64) -> Result<Vec<Sample>, QueryError> {
        match self.eval(e, t)? {
            Value::Vector(v) => Ok(v),
            _ => exec(format!("expected an instant vector: {e}")),
        }
    }

    fn scalar(&self, e: &Expr, t: i64) -> Result<f64, QueryError> {
        match self.eval(e, t)? {
            Value::Scalar(v) => Ok(v),
            _ => exec(format!("expected a scalar: {e}")),
        }
    }

    fn matrix(&self, e: &Expr, t: i64) -> Result<Vec<SeriesData>, QueryError> {
        match self.eval(e, t)? {
            Value::Matrix(m) => Ok(m),
            _ => exec(format!("expected a range vector: {e}")),
        }
    }

    fn aggregate(&self, a: &AggregateExpr, t: i64) -> Result<Value, QueryError> {
        let op = a.op.to_string();
        let input = self.vector(&a.expr, t)?;
        let param = match &a.param {
            Some(p) if op != "count_values" => Some(self.scalar(p, t)?),
            _ => None,
        };
        let key = |l: &Labels| -> Labels {
            match &a.modifier {
                Some(LabelModifier::Include(ls)) => l.filter(|k| ls.labels.iter().any(|x| x == k)),
                Some(LabelModifier::Exclude(ls)) => l.filter(|k| k != "__name__" && !ls.labels.iter().any(|x| x == k)),
                None => Labels::default(),
            }
        };
        let mut groups: Vec<(Labels, Vec<Sample>)> = Vec::new();
        let mut index: HashMap<Labels, usize> = HashMap::new();
        for s in input {
            let k = key(&s.labels);
            let i = *index.entry(k.clone()).or_insert_with(|| {
                groups.push((k, Vec::new()));
                groups.len() - 1
            });
            groups[i].1.push(s);
        }
        let mut out = Vec::new();
        for (k, members) in groups {
            let vals: Vec<f64> = members.iter().map(|s| s.v).collect();
            let n = vals.len() as f64;
            let one = |v: f64| Sample { labels: k.clone(), v };
            match op.as_str() {
                "sum" => out.push(one(vals.iter().sum())),
                "avg" => out.push(one(mean(&vals))),
                "count" => out.push(one(n)),
                "group" => out.push(one(1.0)),
                "min" => {
                    out.push(one(vals.iter().copied().fold(f64::NAN, |m, v| if m.is_nan() || v < m { v } else { m })))
                }
                "max" => {
                    out.push(one(vals.iter().copied().fold(f64::NAN, |m, v| if m.is_nan() || v > m { v } else { m })))
                }
                "stddev" => out.push(one(variance(&vals).sqrt())),
                "stdvar" => out.push(one(variance(&vals))),
                "quantile" => out.push(one(quantile(param.unwrap_or(f64::NAN), &vals))),
                "topk" | "bottomk" => {
                    let kk = param.unwrap_or(0.0);
                    if kk < 1.0 {
                        continue;
                    }
                    let mut m = members;
                    let top = op == "topk";
                    m.sort_by(|x, y| {
                        let o = x.v.partial_cmp(&y.v).unwrap_or_else(|| x.v.is_nan().cmp(&y.v.is_nan()).reverse());
                        if top {
                            o.reverse()
                        } else {
                            o
                        }
                    });
                    out.extend(m.into_iter().take(kk as usize));
                }
                "count_values" => {
                    let label = match a.param.as_deref() {
                        Some(Expr::StringLiteral(s)) => s.val.clone(),
                        _ => return exec("count_values needs a label name"),
                    };
                    let mut counts: Vec<(String, f64)> = Vec::new();
                    for v in vals {
                        let s = format_value(v);
                        match counts.iter_mut().find(|(x, _)| *x == s) {
                            Some(c) => c.1 += 1.0,
                            None => counts.push((s, 1.0)),
                        }
                    }
                    for (value, c) in counts {
                        out.push(Sample { labels: k.with(&label, &value), v: c });
                    }
                }
                other => return exec(format!("aggregation {other} is not supported")),
            }
        }
        Ok(Value::Vector(out))
    }

    fn binary(&self, b: &BinaryExpr, t: i64) -> Result<Value, QueryError> {
        let op = b.op.to_string();
        let return_bool = b.return_bool();
        let lhs = self.eval(&b.lhs, t)?;
        let rhs = self.eval(&b.rhs, t)?;
        let comparison = matches!(op.as_str(), "==" | "!=" | ">" | "<" | ">=" | "<=");
        match (lhs, rhs) {
            (Value::Scalar(x), Value::Scalar(y)) => {
                let v = apply(&op, x, y).ok_or_else(|| QueryError::Execution(format!("operator {op} on scalars")))?;
                Ok(Value::Scalar(if comparison { bool_num(v.1) } else { v.0 }))
            }
            (Value::Vector(vs), Value::Scalar(y)) => Ok(Value::Vector(vector_scalar(&op, vs, y, false, return_bool))),
            (Value::Scalar(x), Value::Vector(vs)) => Ok(Value::Vector(vector_scalar(&op, vs, x, true, return_bool))),
            (Value::Vector(l), Value::Vector(r)) => Ok(Value::Vector(vector_vector(&op, b, l, r, return_bool)?)),
            _ => exec(format!("operator {op} needs scalars or instant vectors")),
        }
    }

    fn call(&self, c: &Call, t: i64) -> Result<Value, QueryError> {
        let name = c.func.name;
        let args = &c.args.args;
        let arg = |i: usize| -> Result<&Expr, QueryError> {
            args.get(i).map(|b| &**b).ok_or_else(|| QueryError::Execution(format!("{name}: missing argument {i}")))
        };
        let map_vec = |f: &dyn Fn(f64) -> f64| -> Result<Value, QueryError> {
            let v = self.vector(arg(0)?, t)?;
            Ok(Value::Vector(v.into_iter().map(|s| Sample { labels: drop_name(&s.labels), v: f(s.v) }).collect()))
        };
        let over_time = |f: &WindowFn| -> Result<Value, QueryError> {
            let m = self.matrix(arg(0)?, t)?;
            Ok(Value::Vector(
                m.into_iter()
                    .filter_map(|s| f(&s.samples).map(|v| Sample { labels: drop_name(&s.labels), v }))
                    .collect(),
            ))
        };
        match name {
            "rate" | "increase" | "delta" => {
                let (range, vs) = range_of(arg(0)?)?;
                let ref_t = self.at_time(&vs.at, t) - offset_ms(&vs.offset);
                let m = self.matrix(arg(0)?, t)?;
                let counter = name != "delta";
                Ok(Value::Vector(
                    m.into_iter()
                        .filter_map(|s| {
                            extrapolated(&s.samples, ref_t - range, ref_t, counter, name == "rate")
                                .map(|v| Sample { labels: drop_name(&s.labels), v })
                        })
                        .collect(),
                ))
            }
            "irate" | "idelta" => over_time(&|s| {
                let [.., (t0, v0), (t1, v1)] = s else { return None };
                let dt = (t1 - t0) as f64 / 1000.0;
                if dt == 0.0 {
                    return None;
                }
                if name == "idelta" {
                    return Some(v1 - v0);
                }
                Some(if v1 < v0 { v1 / dt } else { (v1 - v0) / dt })
            }),
            "avg_over_time" => over_time(&|s| Some(mean(&vals(s)))),
            "sum_over_time" => over_time(&|s| Some(s.iter().map(|x| x.1).sum())),
            "count_over_time" => over_time(&|s| Some(s.len() as f64)),
            "min_over_time" => {
                over_time(&|s| vals(s).into_iter().reduce(|a, b| if b < a || a.is_nan() { b } else { a }))
            }
            "max_over_time" => {
                over_time(&|s| vals(s).into_iter().reduce(|a, b| if b > a || a.is_nan() { b } else { a }))
            }
            "last_over_time" => {
                let m = self.matrix(arg(0)?, t)?;
                Ok(Value::Vector(
                    m.into_iter()
                        .filter_map(|s| s.samples.last().map(|x| Sample { labels: s.labels.clone(), v: x.1 }))
                        .collect(),
                ))
            }
            "present_over_time" => over_time(&|_| Some(1.0)),
            "stddev_over_time" => over_time(&|s| Some(variance(&vals(s)).sqrt())),
            "stdvar_over_time" => over_time(&|s| Some(variance(&vals(s)))),
            "changes" => over_time(&|s| Some(s.windows(2).filter(|w| w[0].1 != w[1].1).count() as f64)),
            "resets" => over_time(&|s| Some(s.windows(2).filter(|w| w[1].1 < w[0].1).count() as f64)),
            "deriv" => over_time(&|s| linear_regression(s, s.first()?.0).map(|(slope, _)| slope)),
            "predict_linear" => {
                let by = self.scalar(arg(1)?, t)?;
                over_time(&|s| linear_regression(s, t).map(|(slope, icpt)| slope * by + icpt))
            }
            "quantile_over_time" => {
                let q = self.scalar(arg(0)?, t)?;
                let m = self.matrix(arg(1)?, t)?;
                Ok(Value::Vector(
                    m.into_iter()
                        .map(|s| Sample { labels: drop_name(&s.labels), v: quantile(q, &vals(&s.samples)) })
                        .collect(),
                ))
            }
            "histogram_quantile" => {
                let q = self.scalar(arg(0)?, t)?;
                let v = self.vector(arg(1)?, t)?;
                Ok(Value::Vector(histogram_quantile(q, v)))
            }
            "abs" => map_vec(&f64::abs),
            "ceil" => map_vec(&f64::ceil),
            "floor" => map_vec(&f64::floor),
            "exp" => map_vec(&f64::exp),
            "sqrt" => map_vec(&f64::sqrt),
            "ln" => map_vec(&f64::ln),
            "log2" => map_vec(&f64::log2),
            "log10" => map_vec(&f64::log10),
            "sgn" => map_vec(&|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    v
                }
            }),
            "round" => {
                let to = match args.get(1) {
                    Some(e) => self.scalar(e, t)?,
                    None => 1.0,
                };
                let inv = 1.0 / to;
                map_vec(&|v| (v * inv + 0.5).floor() / inv)
            }
            "clamp" => {
                let (lo, hi) = (self.scalar(arg(1)?, t)?, self.scalar(arg(2)?, t)?);
                if lo > hi {
                    return Ok(Value::Vector(Vec::new()));
                }
                map_vec(&|v| v.max(lo).min(hi))
            }
            "clamp_min" => {
                let lo = self.scalar(arg(1)?, t)?;
                map_vec(&|v| v.max(lo))
            }
            "clamp_max" => {
                let hi = self.scalar(arg(1)?, t)?;
                map_vec(&|v| v.min(hi))
            }
            "time" => Ok(Value::Scalar(t as f64 / 1000.0)),
            "timestamp" => {
                // The timestamp of each series' sample at t.
                let e = arg(0)?;
                let Expr::VectorSelector(vs) = strip_parens(e) else {
                    let v = self.vector(e, t)?;
                    return Ok(Value::Vector(
                        v.into_iter().map(|s| Sample { labels: drop_name(&s.labels), v: t as f64 / 1000.0 }).collect(),
                    ));
                };
                let ref_t = self.at_time(&vs.at, t) - offset_ms(&vs.offset);
                let data = self.data_for(vs, LOOKBACK_MS, ref_t)?;
                Ok(Value::Vector(
                    data.iter()
                        .filter_map(|s| {
                            latest(&s.samples, ref_t)
                                .map(|(ts, _)| Sample { labels: drop_name(&s.labels), v: ts as f64 / 1000.0 })
                        })
                        .collect(),
                ))
            }
            "vector" => Ok(Value::Vector(vec![Sample { labels: Labels::default(), v: self.scalar(arg(0)?, t)? }])),
            "scalar" => {
                let v = self.vector(arg(0)?, t)?;
                Ok(Value::Scalar(if v.len() == 1 { v[0].v } else { f64::NAN }))
            }
            "absent" | "absent_over_time" => {
                let present = match self.eval(arg(0)?, t)? {
                    Value::Vector(v) => !v.is_empty(),
                    Value::Matrix(m) => !m.is_empty(),
                    _ => true,
                };
                if present {
                    return Ok(Value::Vector(Vec::new()));
                }
                // The labels the selector pins with equality become the result's labels.
                let labels = match strip_parens(arg(0)?) {
                    Expr::VectorSelector(vs) => equality_labels(vs),
                    Expr::MatrixSelector(m) => equality_labels(&m.vs),
                    _ => Labels::default(),
                };
                Ok(Value::Vector(vec![Sample { labels, v: 1.0 }]))
            }
            "sort" | "sort_desc" => {
                let mut v = self.vector(arg(0)?, t)?;
                v.sort_by(|a, b| {
                    let o = a.v.partial_cmp(&b.v).unwrap_or(std::cmp::Ordering::Equal);
                    if name == "sort" {
                        o
                    } else {
                        o.reverse()
                    }
                });
                Ok(Value::Vector(v))
            }
            "label_replace" => {
                let v = self.vector(arg(0)?, t)?;
                let s = |i: usize| -> Result<String, QueryError> {
                    match strip_parens(arg(i)?) {
                        Expr::StringLiteral(s) => Ok(s.val.clone()),
                        _ => exec("label_replace needs string arguments"),
                    }
                };
                let (dst, repl, src, re) = (s(1)?, s(2)?, s(3)?, s(4)?);
                let re = regex::Regex::new(&format!("^(?:{re})$"))
                    .map_err(|e| QueryError::BadData(format!("invalid regular expression in label_replace(): {e}")))?;
                Ok(Value::Vector(
                    v.into_iter()
                        .map(|smp| match re.captures(smp.labels.value(&src)) {
                            Some(caps) => {
                                let mut out = String::new();
                                caps.expand(&repl, &mut out);
                                Sample { labels: smp.labels.with(&dst, &out), v: smp.v }
                            }
                            None => smp,
                        })
                        .collect(),
                ))
            }
            other => exec(format!("function {other} is not supported")),
        }
    }
}

/// A series' value at `ref_t`: its newest sample at or before it, within the lookback, unless that is a
/// staleness marker.
fn latest(samples: &[(i64, f64)], ref_t: i64) -> Option<(i64, f64)> {
    let i = samples.partition_point(|(ts, _)| *ts <= ref_t);
    let (ts, v) = *samples.get(i.checked_sub(1)?)?;
    (ts >= ref_t - LOOKBACK_MS && !is_stale(v)).then_some((ts, v))
}

/// Series collected step by step, as a matrix sorted by labels.
fn sorted_series(series: HashMap<Labels, Vec<(i64, f64)>>) -> Vec<SeriesData> {
    let mut out: Vec<SeriesData> = series.into_iter().map(|(labels, samples)| SeriesData { labels, samples }).collect();
    out.sort_by(|a, b| a.labels.cmp(&b.labels));
    out
}

/// A function of one series' samples in a range window (the `*_over_time` family).
type WindowFn<'f> = dyn Fn(&[(i64, f64)]) -> Option<f64> + 'f;

fn strip_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip_parens(&p.expr),
        other => other,
    }
}

fn equality_labels(vs: &VectorSelector) -> Labels {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for m in &vs.matchers.matchers {
        if matches!(m.op, MatchOp::Equal) && m.name != "__name__" {
            if pairs.iter().any(|(k, _)| *k == m.name) {
                pairs.retain(|(k, _)| *k != m.name);
                continue;
            }
            pairs.push((m.name.clone(), m.value.clone()));
        }
    }
    Labels::new(pairs)
}

fn range_of(e: &Expr) -> Result<(i64, &VectorSelector), QueryError> {
    match strip_parens(e) {
        Expr::MatrixSelector(m) => Ok((ms(&m.range), &m.vs)),
        _ => exec("rate, increase and delta need a range vector selector"),
    }
}

fn vals(s: &[(i64, f64)]) -> Vec<f64> {
    s.iter().map(|x| x.1).collect()
}

fn mean(v: &[f64]) -> f64 {
    // Kahan-free running mean, as Prometheus computes avg incrementally.
    let mut m = 0.0;
    for (i, x) in v.iter().enumerate() {
        m += (x - m) / (i as f64 + 1.0);
    }
    if v.is_empty() {
        f64::NAN
    } else {
        m
    }
}

fn variance(v: &[f64]) -> f64 {
    let (mut n, mut m, mut m2) = (0.0, 0.0, 0.0);
    for x in v {
        n += 1.0;
        let d = x - m;
        m += d / n;
        m2 += d * (x - m);
    }
    m2 / n
}

/// The φ-quantile by linear interpolation between the closest ranks, as Prometheus' `quantile`.
pub fn quantile(q: f64, values: &[f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let w = rank - rank.floor();
    v[lower as usize] * (1.0 - w) + v[upper as usize] * w
}

/// Least-squares fit of value against time (seconds from `intercept_t`): (slope per second, value at it).
fn linear_regression(s: &[(i64, f64)], intercept_t: i64) -> Option<(f64, f64)> {
    if s.len() < 2 {
        return None;
    }
    let n = s.len() as f64;
    let (mut sx, mut sy, mut sxy, mut sx2) = (0.0, 0.0, 0.0, 0.0);
    for &(t, v) in s {
        let x = (t - intercept_t) as f64 / 1000.0;
        sx += x;
        sy += v;
        sxy += x * v;
        sx2 += x * x;
    }
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    Some((slope, sy / n - slope * sx / n))
}

/// rate / increase / delta over a range, extrapolated to the range's edges as Prometheus does.
fn extrapolated(s: &[(i64, f64)], range_start: i64, range_end: i64, counter: bool, per_second: bool) -> Option<f64> {
    if s.len() < 2 {
        return None;
    }
    let (first_t, first_v) = s[0];
    let (last_t, last_v) = s[s.len() - 1];
    let mut result = last_v - first_v;
    if counter {
        let mut prev = 0.0;
        for &(_, v) in s {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    let mut to_start = (first_t - range_start) as f64 / 1000.0;
    let to_end = (range_end - last_t) as f64 / 1000.0;
    let sampled = (last_t - first_t) as f64 / 1000.0;
    let avg_gap = sampled / (s.len() - 1) as f64;
    if counter && result > 0.0 && first_v >= 0.0 {
        let to_zero = sampled * (first_v / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_gap * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold { to_start } else { avg_gap / 2.0 };
    interval += if to_end < threshold { to_end } else { avg_gap / 2.0 };
    result *= interval / sampled;
    if per_second {
        result /= (range_end - range_start) as f64 / 1000.0;
    }
    Some(result)
}

/// Classic-histogram quantiles: buckets grouped by their labels without `le`.
fn histogram_quantile(q: f64, v: Vec<Sample>) -> Vec<Sample> {
    let mut groups: Vec<(Labels, Vec<(f64, f64)>)> = Vec::new();
    for s in v {
        let Some(le) = s.labels.get("le").and_then(parse_float) else { continue };
        let key = drop_name(&s.labels).filter(|k| k != "le");
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some(g) => g.1.push((le, s.v)),
            None => groups.push((key, vec![(le, s.v)])),
        }
    }
    groups.into_iter().map(|(labels, buckets)| Sample { labels, v: bucket_quantile(q, buckets) }).collect()
}

fn bucket_quantile(q: f64, mut b: Vec<(f64, f64)>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    b.sort_by(|x, y| x.0.partial_cmp(&y.0).unwrap_or(std::cmp::Ordering::Equal));
    if b.len() < 2 || b[b.len() - 1].0 != f64::INFINITY {
        return f64::NAN;
    }
    // Buckets with the same bound are merged; counts are made monotonic.
    b.dedup_by(|next, prev| {
        if next.0 == prev.0 {
            prev.1 += next.1;
            true
        } else {
            false
        }
    });
    let mut max = f64::NEG_INFINITY;
    for x in b.iter_mut() {
        if x.1 < max {
            x.1 = max;
        } else {
            max = x.1;
        }
    }
    let total = b[b.len() - 1].1;
    if total == 0.0 || total.is_nan() {
        return f64::NAN;
    }
    let mut rank = q * total;
    let i = b.partition_point(|x| x.1 < rank);
    if i == b.len() - 1 {
        return b[b.len() - 2].0;
    }
    if i == 0 && b[0].0 <= 0.0 {
        return b[0].0;
    }
    let (start, end) = (if i == 0 { 0.0 } else { b[i - 1].0 }, b[i].0);
    let mut count = b[i].1;
    if i > 0 {
        count -= b[i - 1].1;
        rank -= b[i - 1].1;
    }
    start + (end - start) * (rank / count)
}

pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" | "inf" | "+inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// A value as Prometheus writes it in JSON: shortest round-trip decimal, `+Inf`, `-Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn drop_name(l: &Labels) -> Labels {
    l.filter(|k| k != "__name__")
}

fn bool_num(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// An operator on two numbers: (arithmetic result, comparison outcome).
fn apply(op: &str, x: f64, y: f64) -> Option<(f64, bool)> {
    Some(match op {
        "+" => (x + y, false),
        "-" => (x - y, false),
        "*" => (x * y, false),
        "/" => (x / y, false),
        "%" => (x % y, false),
        "^" => (x.powf(y), false),
        "atan2" => (x.atan2(y), false),
        "==" => (x, x == y),
        "!=" => (x, x != y),
        ">" => (x, x > y),
        "<" => (x, x < y),
        ">=" => (x, x >= y),
        "<=" => (x, x <= y),
        _ => return None,
    })
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

fn vector_scalar(op: &str, vs: Vec<Sample>, scalar: f64, scalar_left: bool, return_bool: bool) -> Vec<Sample> {
    let mut out = Vec::new();
    for s in vs {
        let (x, y) = if scalar_left { (scalar, s.v) } else { (s.v, scalar) };
        let Some((v, keep)) = apply(op, x, y) else { continue };
        if is_comparison(op) {
            if return_bool {
                out.push(Sample { labels: drop_name(&s.labels), v: bool_num(keep) });
            } else if keep {
                // A filter keeps the vector's own value.
                out.push(Sample { labels: s.labels, v: s.v });
            }
        } else {
            out.push(Sample { labels: drop_name(&s.labels), v });
        }
    }
    out
}

fn signature(l: &Labels, b: &BinaryExpr) -> Labels {
    match b.modifier.as_ref().and_then(|m| m.matching.as_ref()) {
        Some(LabelModifier::Include(on)) => l.filter(|k| on.labels.iter().any(|x| x == k)),
        Some(LabelModifier::Exclude(ign)) => l.filter(|k| k != "__name__" && !ign.labels.iter().any(|x| x == k)),
        None => drop_name(l),
    }
}

fn vector_vector(
    op: &str,
    b: &BinaryExpr,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    return_bool: bool,
) -> Result<Vec<Sample>, QueryError> {
    let card = b.modifier.as_ref().map(|m| &m.card);
    match op {
        "and" | "or" | "unless" => {
            let rsigs: std::collections::HashSet<Labels> = rhs.iter().map(|s| signature(&s.labels, b)).collect();
            return Ok(match op {
                "and" => lhs.into_iter().filter(|s| rsigs.contains(&signature(&s.labels, b))).collect(),
                "unless" => lhs.into_iter().filter(|s| !rsigs.contains(&signature(&s.labels, b))).collect(),
                _ => {
                    let lsigs: std::collections::HashSet<Labels> =
                        lhs.iter().map(|s| signature(&s.labels, b)).collect();
                    let mut out = lhs;
                    out.extend(rhs.into_iter().filter(|s| !lsigs.contains(&signature(&s.labels, b))));
                    out
                }
            });
        }
        _ => {}
    }
    // One-to-one, or many-to-one / one-to-many with group_left / group_right: the "one" side is indexed.
    let (many, one, one_is_left, include) = match card {
        Some(VectorMatchCardinality::OneToMany(inc)) => (rhs, lhs, true, Some(inc)),
        Some(VectorMatchCardinality::ManyToOne(inc)) => (lhs, rhs, false, Some(inc)),
        _ => (lhs, rhs, false, None),
    };
    let mut index: HashMap<Labels, Sample> = HashMap::new();
    for s in one {
        let sig = signature(&s.labels, b);
        if index.insert(sig.clone(), s).is_some() {
            return exec(format!(
                "found duplicate series for the match group {sig} on the {} hand-side of the operation: {op}; many-to-many matching not allowed: matching labels must be unique on one side",
                if one_is_left { "left" } else { "right" }
            ));
        }
    }
    let mut out = Vec::new();
    let mut seen: std::collections::HashSet<Labels> = std::collections::HashSet::new();
    for s in many {
        let sig = signature(&s.labels, b);
        let Some(o) = index.get(&sig) else { continue };
        let (l, r) = if one_is_left { (o, &s) } else { (&s, o) };
        let Some((v, keep)) = apply(op, l.v, r.v) else { continue };
        // Result labels come from the "many" side (the left one for one-to-one).
        let mut labels = if is_comparison(op) && !return_bool { s.labels.clone() } else { drop_name(&s.labels) };
        match (&b.modifier.as_ref().and_then(|m| m.matching.as_ref()), include) {
            (Some(LabelModifier::Include(on)), None) => labels = labels.filter(|k| on.labels.iter().any(|x| x == k)),
            (Some(LabelModifier::Exclude(ign)), None) => labels = labels.filter(|k| !ign.labels.iter().any(|x| x == k)),
            _ => {}
        }
        if let Some(inc) = include {
            for name in &inc.labels {
                labels = labels.with(name, o.labels.value(name));
            }
        }
        if include.is_none() && !seen.insert(sig.clone()) {
            return exec(format!(
                "found duplicate series for the match group {sig} on the left hand-side of the operation: {op}; many-to-many matching not allowed: matching labels must be unique on one side"
            ));
        }
        if is_comparison(op) {
            if return_bool {
                out.push(Sample { labels, v: bool_num(keep) });
            } else if keep {
                out.push(Sample { labels, v: l.v });
            }
        } else {
            out.push(Sample { labels, v });
        }
    }
    Ok(out)
}

fn is_sorting(e: &Expr) -> bool {
    match e {
        Expr::Call(c) => matches!(c.func.name, "sort" | "sort_desc"),
        Expr::Paren(p) => is_sorting(&p.expr),
        _ => false,
    }
}

/// What an expression evaluates to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValueType {
    Scalar,
    String,
    Vector,
    Matrix,
}

impl ValueType {
    fn name(self) -> &'static str {
        match self {
            ValueType::Scalar => "scalar",
            ValueType::String => "string",
            ValueType::Vector => "instant vector",
            ValueType::Matrix => "range vector",
        }
    }
}

pub fn expr_type(e: &Expr) -> ValueType {
    match e {
        Expr::NumberLiteral(_) => ValueType::Scalar,
        Expr::StringLiteral(_) => ValueType::String,
        Expr::MatrixSelector(_) | Expr::Subquery(_) => ValueType::Matrix,
        Expr::Paren(p) => expr_type(&p.expr),
        Expr::Unary(u) => expr_type(&u.expr),
        Expr::Binary(b) => {
            if expr_type(&b.lhs) == ValueType::Scalar && expr_type(&b.rhs) == ValueType::Scalar {
                ValueType::Scalar
            } else {
                ValueType::Vector
            }
        }
        Expr::Call(c) => match c.func.return_type {
            parser::value::ValueType::Scalar => ValueType::Scalar,
            parser::value::ValueType::String => ValueType::String,
            parser::value::ValueType::Matrix => ValueType::Matrix,
            parser::value::ValueType::Vector => ValueType::Vector,
        },
        _ => ValueType::Vector,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Tsdb {
        let db = Tsdb::new();
        // A counter growing 1/s per instance, scraped every 15 s for 10 minutes, with a reset on h1.
        for (inst, job) in [("h0", "api"), ("h1", "api"), ("h2", "web")] {
            let l = Labels::new([("__name__", "reqs_total"), ("instance", inst), ("job", job)]);
            for i in 0..=40i64 {
                let mut v = (i * 15) as f64;
                if inst == "h1" && i >= 20 {
                    v -= 300.0;
                }
                db.append(&l, i * 15_000, v).expect("append");
            }
        }
        for (le, c) in [("0.1", 10.0), ("0.5", 60.0), ("1", 90.0), ("+Inf", 100.0)] {
            let l = Labels::new([("__name__", "lat_bucket"), ("le", le), ("job", "api")]);
            db.append(&l, 600_000, c).expect("append");
        }
        db
    }

    fn vector(q: &str, t: i64) -> Vec<(String, f64)> {
        let db = db();
        match Engine::new(&db).instant(q, t).expect(q) {
            Value::Vector(v) => v.into_iter().map(|s| (s.labels.to_string(), s.v)).collect(),
            Value::Scalar(v) => vec![(String::new(), v)],
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rate_extrapolates_and_handles_resets() {
        let v = vector("rate(reqs_total[5m])", 600_000);
        assert_eq!(v.len(), 3);
        for (_, r) in &v {
            assert!((r - 1.0).abs() < 1e-9, "{v:?}");
        }
        let inc = vector("increase(reqs_total{instance=\"h1\"}[5m])", 600_000);
        assert!((inc[0].1 - 300.0).abs() < 1e-9, "{inc:?}");
        assert_eq!(vector("irate(reqs_total{instance=\"h0\"}[1m])", 600_000)[0].1, 1.0);
    }

    #[test]
    fn aggregations_group_like_prometheus() {
        let by_job = vector("sum by (job) (rate(reqs_total[5m]))", 600_000);
        assert_eq!(by_job.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(), ["{job=\"api\"}", "{job=\"web\"}"]);
        assert!((by_job[0].1 - 2.0).abs() < 1e-9);
        let without = vector("max without (instance) (reqs_total)", 600_000);
        assert_eq!(without[0].0, "{job=\"api\"}");
        assert_eq!(without[0].1, 600.0);
        assert_eq!(vector("count(reqs_total)", 600_000)[0].1, 3.0);
        let top = vector("topk(1, reqs_total)", 600_000);
        assert_eq!(top.len(), 1);
        assert!(top[0].0.starts_with("reqs_total{"), "topk keeps the series' labels: {top:?}");
    }

    #[test]
    fn binary_operators_match_vectors() {
        let ratio = vector("reqs_total / on(instance) reqs_total", 600_000);
        assert_eq!(ratio.len(), 3);
        assert!(ratio.iter().all(|(l, v)| *v == 1.0 && !l.contains("job")));
        let cmp = vector("reqs_total > 400", 600_000);
        assert_eq!(cmp.len(), 2, "h1 was reset: {cmp:?}");
        assert!(cmp[0].0.starts_with("reqs_total"), "a filter keeps the name");
        let b = vector("reqs_total > bool 400", 600_000);
        assert_eq!(b.iter().map(|x| x.1).sum::<f64>(), 2.0);
        assert_eq!(vector("2 * 3 + 1", 0)[0].1, 7.0);
        let grouped = vector("reqs_total * on(job) group_left() sum by (job) (reqs_total)", 600_000);
        assert_eq!(grouped.len(), 3);
    }

    #[test]
    fn subqueries_and_range_results_count_against_the_sample_budget() {
        let db = db();
        let limits = QueryLimits { max_samples: 1_000, ..Default::default() };
        let mut e = Engine::with_limits(&db, limits);
        let err = e.instant("count_over_time(vector(1)[1h:1s])", 3_600_000).expect_err("3,601 points");
        assert!(err.to_string().contains("too many samples"), "{err}");
        assert_eq!(err.kind(), "execution");
        match e.instant("count_over_time(vector(1)[10m:1s])", 3_600_000).expect("601 points fit") {
            Value::Vector(v) => assert_eq!(v[0].v, 601.0),
            other => panic!("{other:?}"),
        }
        // Points of a finished subquery are given back: two in a row fit where their sum would not.
        let two = "count_over_time(vector(1)[10m:1s]) + count_over_time(vector(2)[10m:1s])";
        assert!(e.instant(two, 3_600_000).is_ok());
        let err = e.range("vector(1)", 0, 2_000_000, 1_000).expect_err("2,001 result points");
        assert!(err.to_string().contains("too many samples"), "{err}");
        // A deadline already past stops the query at once, with Prometheus' error type.
        let mut late = Engine::with_limits(&db, QueryLimits { timeout: Duration::ZERO, ..Default::default() });
        let err = late.instant("count_over_time(vector(1)[1h:1s])", 3_600_000).expect_err("timed out");
        assert_eq!(err.kind(), "timeout", "{err}");
    }

    #[test]
    fn lookback_and_staleness() {
        let db = db();
        let l = Labels::new([("__name__", "g")]);
        db.append(&l, 0, 1.0).expect("append");
        db.append(&l, 60_000, crate::tsdb::stale_nan()).expect("append");
        let mut e = Engine::new(&db);
        let n = |e: &mut Engine, t| match e.instant("g", t).expect("query") {
            Value::Vector(v) => v.len(),
            _ => 99,
        };
        assert_eq!(n(&mut e, 30_000), 1);
        assert_eq!(n(&mut e, 61_000), 0, "a stale marker ends the series");
        let n2 = |e: &mut Engine, t| match e.instant("reqs_total", t).expect("query") {
            Value::Vector(v) => v.len(),
            _ => 99,
        };
        assert_eq!(n2(&mut e, 600_000 + LOOKBACK_MS), 3);
        assert_eq!(n2(&mut e, 600_001 + LOOKBACK_MS), 0, "nothing in the last 5 minutes");
    }

    #[test]
    fn histogram_quantile_interpolates() {
        let v = vector("histogram_quantile(0.5, lat_bucket)", 600_000);
        // rank 50 falls in (0.1, 0.5] holding 50 observations, 40 of them before rank 50.
        assert_eq!(v[0].0, "{job=\"api\"}");
        assert!((v[0].1 - (0.1 + 0.4 * (40.0 / 50.0))).abs() < 1e-12);
        assert_eq!(vector("histogram_quantile(0.99, lat_bucket)", 600_000)[0].1, 1.0);
    }

    #[test]
    fn over_time_functions() {
        assert_eq!(vector("count_over_time(reqs_total{instance=\"h0\"}[1m])", 600_000)[0].1, 5.0);
        assert_eq!(vector("max_over_time(reqs_total{instance=\"h0\"}[1m])", 600_000)[0].1, 600.0);
        assert_eq!(vector("avg_over_time(reqs_total{instance=\"h0\"}[1m])", 600_000)[0].1, 570.0);
        assert_eq!(vector("quantile(0.5, reqs_total)", 600_000)[0].1, 600.0);
    }

    #[test]
    fn range_queries_step_through_time() {
        let db = db();
        let Value::Matrix(m) = Engine::new(&db).range("sum(reqs_total)", 0, 60_000, 15_000).expect("range") else {
            panic!("matrix")
        };
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].samples, vec![(0, 0.0), (15_000, 45.0), (30_000, 90.0), (45_000, 135.0), (60_000, 180.0)]);
        assert!(matches!(Engine::new(&db).range("up", 0, 10, 0), Err(QueryError::BadData(_))));
        assert!(matches!(Engine::new(&db).range("up[5m]", 0, 10, 1), Err(QueryError::BadData(_))));
    }

    /// Runs `f` on a thread with the default 2 MiB stack (tokio's workers and blocking threads have as much); an
    /// overflow aborts the test binary, so every assertion after it proves there was none.
    fn on_a_2_mib_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new().stack_size(2 << 20).spawn(f).unwrap().join().expect("no overflow")
    }

    /// A query nested too deeply is refused at parse, with a position, however deep it is; one at the limit
    /// evaluates on a thread with the default 2 MiB stack (the size of tokio's and of blocking threads).
    #[test]
    fn deep_queries_are_refused_and_the_deepest_allowed_one_evaluates() {
        for terms in [MAX_DEPTH + 2, 5_000, 30_000] {
            let q = vec!["1"; terms].join("+");
            let text =
                if q.len() > MAX_QUERY_BYTES { q[..MAX_QUERY_BYTES - 1].trim_end_matches('+').to_string() } else { q };
            let err = on_a_2_mib_stack(move || parse(&text).map(|_| ()).unwrap_err());
            let msg = err.to_string();
            assert!(msg.contains("at most 128 levels"), "{msg}");
            assert!(matches!(err, QueryError::Parse { position, .. } if position > 1), "{err:?}");
        }
        // Refused before the parser's own recursion: long unary chains (one byte a level), and a long chain with
        // a syntax error at its end (the parser then drops what it built).
        for q in ["-".repeat(65_000) + "x", "-".repeat(65_000) + "x+", "1+".repeat(32_000)] {
            let err = on_a_2_mib_stack(move || parse(&q).map(|_| ()).unwrap_err());
            assert!(err.to_string().contains("at most 1000 are allowed"), "{err}");
        }
        let huge = "1+".repeat(MAX_QUERY_BYTES / 2) + "1";
        assert!(parse(&huge).unwrap_err().to_string().contains("at most 65536"));
        let vectors = vec!["vector(1)"; MAX_DEPTH - 1].join(" + ");
        let deep_parens = "(".repeat(MAX_DEPTH / 2) + "vector(1)" + &")".repeat(MAX_DEPTH / 2);
        for q in [vectors, deep_parens] {
            let v = on_a_2_mib_stack(move || {
                let db = Tsdb::new();
                Engine::new(&db).instant(&q, 1_000).map(|v| format!("{v:?}"))
            });
            assert!(v.is_ok(), "{v:?}");
        }
    }

    #[test]
    fn parse_errors_carry_a_position() {
        let e = parse("sum(rate(x[5m])) by (job").unwrap_err();
        let QueryError::Parse { position, .. } = e else { panic!("{e:?}") };
        assert!(position > 15, "{position}");
        let QueryError::Parse { position, .. } = parse("up + + * 3").unwrap_err() else { panic!() };
        assert!((4..=8).contains(&position), "{position}");
        let QueryError::Parse { position, .. } = parse("up{job=~\"a\"} $").unwrap_err() else { panic!() };
        assert_eq!(position, 14);
    }

    #[test]
    fn values_format_like_prometheus() {
        assert_eq!(format_value(1.0), "1");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }
}
