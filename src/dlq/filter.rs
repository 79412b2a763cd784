//! Item filter expressions for `dlq list --filter` and `dlq retry --filter`.
//!
//! ```text
//! expr       := or
//! or         := and (("||" | "or") and)*
//! and        := unary (("&&" | "and") unary)*
//! unary      := ("!" | "not") unary | "(" expr ")" | field op value
//! field      := item_id | error_type | failure_count | first_attempt | last_attempt
//!             | error_signature | reprocess_eligible | manual_review_required
//!             | error_message | item.<key>[.<key>…]
//! op         := == | != | < | <= | > | >= | ~ (regex) | matches (the same) | contains
//!
//! `and`, `or` and `not` may be written in capitals (`AND`, the original's); in a quoted
//! value `\'` and `\\` are a quote and a backslash, any other backslash stays (regular
//! expressions keep `\.`).
//! value      := 'text' | "text" | number | true | false | null
//! ```
//!
//! The same language filters a workflow's work items (`map.filter`, see
//! [`ItemFilter::parse_data`]): there a field is any path into the item, with or without a
//! leading `item.` (`score >= 5`, `item.meta.lang == 'rust'`).
//!
//! A malformed expression is an error naming its column, never "match everything".

use regex::Regex;
use serde_json::Value;

use super::{DeadLetteredItem, ItemSummary};

/// How deep parentheses may nest in an expression of user text (filters, `when:`,
/// JSONPath): deeper is an error, never a stack overflow.
pub const MAX_NESTING: usize = 64;

/// An expression quoted in an error: whole when short, else its start.
pub fn preview(expr: &str) -> String {
    const LIMIT: usize = 80;
    if expr.chars().count() <= LIMIT {
        format!("{expr:?}")
    } else {
        let start: String = expr.chars().take(LIMIT - 20).collect();
        format!("{start:?}… ({} characters)", expr.chars().count())
    }
}

/// Checks that brackets (`(`, `[`, `{`) outside quotes nest at most [`MAX_NESTING`] deep
/// in `text`, for parsers of user text that recurse (JSONPath); the error names the
/// 1-based column where the limit is passed.
pub fn check_nesting(text: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in text.chars().enumerate() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    if depth > MAX_NESTING {
                        return Err(format!(
                            "brackets nested deeper than {MAX_NESTING} at column {}",
                            i + 1
                        ));
                    }
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    Ok(())
}

/// A filter expression that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter {} at column {column}: {message}", preview(.expr))]
pub struct FilterError {
    /// The expression.
    pub expr: String,
    /// 1-based column of the problem.
    pub column: usize,
    /// What is wrong.
    pub message: String,
}

impl crate::hint::Hint for FilterError {
    fn hint(&self) -> Option<&'static str> {
        Some(crate::hint::FILTER)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `${name}` in a condition.
    Var(String),
    Str(String),
    Num(f64),
    Op(&'static str),
    LParen,
    RParen,
    End,
}

const FIELDS: [&str; 9] = [
    "item_id",
    "error_type",
    "failure_count",
    "first_attempt",
    "last_attempt",
    "error_signature",
    "reprocess_eligible",
    "manual_review_required",
    "error_message",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Regex,
    Contains,
}

#[derive(Debug, Clone)]
enum Node {
    // Chains are lists, not nested pairs: `a && a && …` never makes a deep tree.
    And(Vec<Node>),
    Or(Vec<Node>),
    Not(Box<Node>),
    Test {
        left: Operand,
        cmp: Cmp,
        right: Operand,
        regex: Option<Regex>,
    },
    /// A condition's bare operand: true, false, or a value that says one of them.
    Truth(Operand),
}

/// One side of a comparison.
#[derive(Debug, Clone)]
enum Operand {
    /// A field of an item (filters).
    Field(Vec<String>),
    /// A literal.
    Lit(Value),
    /// A condition's `${…}`, by the index its resolver gave.
    Var(usize),
}

/// A parsed filter.
#[derive(Debug, Clone)]
pub struct ItemFilter {
    root: Node,
    needs_item: bool,
}

/// How an expression is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Over a dead-lettered item: its fields, `item.<key>`.
    Dlq,
    /// Over a work item's data: every field is a path into it.
    Data,
    /// A step's `when:`: operands are `${…}` variables and literals.
    Condition,
}

fn lex(expr: &str, mode: Mode) -> Result<Vec<(Tok, usize)>, FilterError> {
    let err = |column: usize, message: String| FilterError {
        expr: expr.to_owned(),
        column,
        message,
    };
    let chars: Vec<(usize, char)> = expr.char_indices().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let (pos, c) = chars[i];
        let column = i + 1;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        let next = chars.get(i + 1).map(|(_, c)| *c);
        let two = |a: char, b: char| c == a && next == Some(b);
        let tok = if two('=', '=')
            || two('!', '=')
            || two('<', '=')
            || two('>', '=')
            || two('&', '&')
            || two('|', '|')
        {
            i += 2;
            Tok::Op(match (c, next) {
                ('=', _) => "==",
                ('!', _) => "!=",
                ('<', _) => "<=",
                ('>', _) => ">=",
                ('&', _) => "&&",
                _ => "||",
            })
        } else if matches!(c, '<' | '>' | '~' | '!') {
            i += 1;
            Tok::Op(match c {
                '<' => "<",
                '>' => ">",
                '~' => "~",
                _ => "!",
            })
        } else if c == '$' && next == Some('{') && mode == Mode::Condition {
            let Some(len) = chars[i + 2..].iter().position(|(_, c)| *c == '}') else {
                return Err(err(column, "unclosed ${".into()));
            };
            let name: String = chars[i + 2..i + 2 + len].iter().map(|(_, c)| *c).collect();
            i += len + 3;
            Tok::Var(name)
        } else if c == '(' {
            i += 1;
            Tok::LParen
        } else if c == ')' {
            i += 1;
            Tok::RParen
        } else if c == '\'' || c == '"' {
            let mut text = String::new();
            let mut j = i + 1;
            loop {
                match chars.get(j) {
                    None => return Err(err(column, format!("unbalanced quote {c}"))),
                    // `\'` and `\\` are the quote and the backslash; any other `\x` stays
                    // as written, so a regular expression's `'\.rs$'` keeps its `\.`.
                    Some((_, '\\')) if chars.get(j + 1).is_some() => {
                        let next = chars[j + 1].1;
                        if next != c && next != '\\' {
                            text.push('\\');
                        }
                        text.push(next);
                        j += 2;
                    }
                    Some((_, q)) if *q == c => break,
                    Some((_, other)) => {
                        text.push(*other);
                        j += 1;
                    }
                }
            }
            i = j + 1;
            Tok::Str(text)
        } else if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) {
            let mut j = i + 1;
            while chars
                .get(j)
                .is_some_and(|(_, c)| c.is_ascii_digit() || *c == '.')
            {
                j += 1;
            }
            let end = chars.get(j).map_or(expr.len(), |(p, _)| *p);
            let text = &expr[pos..end];
            i = j;
            Tok::Num(
                text.parse()
                    .map_err(|_| err(column, format!("bad number {text:?}")))?,
            )
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut j = i + 1;
            while chars
                .get(j)
                .is_some_and(|(_, c)| c.is_ascii_alphanumeric() || *c == '_' || *c == '.')
            {
                j += 1;
            }
            let end = chars.get(j).map_or(expr.len(), |(p, _)| *p);
            i = j;
            Tok::Ident(expr[pos..end].to_owned())
        } else {
            return Err(err(column, format!("unexpected character {c:?}")));
        };
        out.push((tok, column));
    }
    out.push((Tok::End, expr.chars().count() + 1));
    Ok(out)
}

/// Gives each `${…}` of a condition its index (or says why it is not a variable).
pub type Resolve<'r> = &'r mut dyn FnMut(&str) -> Result<usize, String>;

struct Parser<'a, 'r> {
    expr: &'a str,
    toks: Vec<(Tok, usize)>,
    at: usize,
    needs_item: bool,
    mode: Mode,
    resolve: Option<Resolve<'r>>,
    /// Parentheses open around the token at hand.
    depth: usize,
}

impl Parser<'_, '_> {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].0
    }

    fn column(&self) -> usize {
        self.toks[self.at].1
    }

    fn err(&self, message: String) -> FilterError {
        FilterError {
            expr: self.expr.to_owned(),
            column: self.column(),
            message,
        }
    }

    /// The keyword `word` (`and`, `or`, `not`; any case, as the original's `AND`/`OR`).
    fn is_word(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(w) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Node, FilterError> {
        let mut terms = vec![self.and()?];
        while matches!(self.peek(), Tok::Op("||")) || self.is_word("or") {
            self.at += 1;
            terms.push(self.and()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Node::Or(terms)
        })
    }

    fn and(&mut self) -> Result<Node, FilterError> {
        let mut terms = vec![self.unary()?];
        while matches!(self.peek(), Tok::Op("&&")) || self.is_word("and") {
            self.at += 1;
            terms.push(self.unary()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Node::And(terms)
        })
    }

    /// Negations are counted, not nested; each `(` goes one level deeper, at most
    /// [`MAX_NESTING`].
    fn unary(&mut self) -> Result<Node, FilterError> {
        let mut negations = 0usize;
        while matches!(self.peek(), Tok::Op("!")) || self.is_word("not") {
            self.at += 1;
            negations += 1;
            if negations > MAX_NESTING {
                return Err(self.err(format!("more than {MAX_NESTING} negations in a row")));
            }
        }
        let inner = if *self.peek() == Tok::LParen {
            if self.depth == MAX_NESTING {
                return Err(self.err(format!("parentheses nested deeper than {MAX_NESTING}")));
            }
            self.depth += 1;
            self.at += 1;
            let inner = self.or()?;
            if *self.peek() != Tok::RParen {
                return Err(self.err("expected ')'".into()));
            }
            self.at += 1;
            self.depth -= 1;
            inner
        } else {
            self.test()?
        };
        Ok(if negations % 2 == 1 {
            Node::Not(Box::new(inner))
        } else {
            inner
        })
    }

    /// A condition's operand: a variable or a literal.
    fn operand(&mut self) -> Result<Operand, FilterError> {
        let operand = match self.peek().clone() {
            Tok::Var(name) => {
                let resolve = self.resolve.as_mut().ok_or_else(|| FilterError {
                    expr: self.expr.to_owned(),
                    column: self.toks[self.at].1,
                    message: "no variables here".into(),
                })?;
                match resolve(&name) {
                    Ok(index) => Operand::Var(index),
                    Err(message) => return Err(self.err(message)),
                }
            }
            Tok::Str(s) => Operand::Lit(Value::String(s)),
            Tok::Num(n) => {
                Operand::Lit(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
            }
            Tok::Ident(w) if w == "true" => Operand::Lit(Value::Bool(true)),
            Tok::Ident(w) if w == "false" => Operand::Lit(Value::Bool(false)),
            Tok::Ident(w) if w == "null" => Operand::Lit(Value::Null),
            // A condition has no fields: a bare word is text (`${level} == high`).
            Tok::Ident(w)
                if !["and", "or", "not", "contains", "matches"]
                    .iter()
                    .any(|k| w.eq_ignore_ascii_case(k)) =>
            {
                Operand::Lit(Value::String(w))
            }
            other => {
                return Err(self.err(format!(
                    "expected ${{…}} or a value ('text', a number, true, false, null), found {}",
                    describe(&other)
                )));
            }
        };
        self.at += 1;
        Ok(operand)
    }

    fn comparison(&self) -> Option<Cmp> {
        Some(match self.peek() {
            Tok::Op("==") => Cmp::Eq,
            Tok::Op("!=") => Cmp::Ne,
            Tok::Op("<") => Cmp::Lt,
            Tok::Op("<=") => Cmp::Le,
            Tok::Op(">") => Cmp::Gt,
            Tok::Op(">=") => Cmp::Ge,
            Tok::Op("~") => Cmp::Regex,
            Tok::Ident(w) if w == "matches" => Cmp::Regex,
            Tok::Ident(w) if w == "contains" => Cmp::Contains,
            _ => return None,
        })
    }

    /// A condition's test: `a op b`, or `a` alone.
    fn condition_test(&mut self) -> Result<Node, FilterError> {
        let left = self.operand()?;
        let Some(cmp) = self.comparison() else {
            if let Operand::Lit(v) = &left
                && !v.is_boolean()
            {
                return Err(self.err(format!("{v} is neither true, false nor a comparison")));
            }
            return Ok(Node::Truth(left));
        };
        self.at += 1;
        let right = self.operand()?;
        let regex = match (&right, cmp) {
            (Operand::Lit(Value::String(pattern)), Cmp::Regex) => Some(self.regex(pattern)?),
            (_, Cmp::Regex) => return Err(self.err("~ needs a quoted regular expression".into())),
            _ => None,
        };
        Ok(Node::Test {
            left,
            cmp,
            right,
            regex,
        })
    }

    fn regex(&self, pattern: &str) -> Result<Regex, FilterError> {
        Regex::new(pattern).map_err(|e| {
            let text = e.to_string();
            self.err(format!(
                "bad regular expression: {}",
                text.lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .trim_start_matches("error: ")
            ))
        })
    }

    fn test(&mut self) -> Result<Node, FilterError> {
        if self.mode == Mode::Condition {
            return self.condition_test();
        }
        let data = self.mode == Mode::Data;
        let Tok::Ident(name) = self.peek().clone() else {
            return Err(self.err("expected a field name".into()));
        };
        let mut field: Vec<String> = name.split('.').map(str::to_owned).collect();
        if data {
            // `item` alone is the item itself (a string item from a line of input).
            if field[0] == "item" {
                field.remove(0);
            }
            if field.iter().any(String::is_empty) {
                return Err(self.err(format!("bad field path {name:?}")));
            }
            field.insert(0, "item".into());
        }
        let known = data
            || match field.as_slice() {
                [one] => FIELDS.contains(&one.as_str()),
                [first, rest @ ..] => first == "item" && rest.iter().all(|k| !k.is_empty()),
                [] => false,
            };
        if !known {
            return Err(self.err(format!(
                "unknown field {name:?} (known: {}, item.<key>)",
                FIELDS.join(", ")
            )));
        }
        if field[0] == "item" || field[0] == "error_message" {
            self.needs_item = true;
        }
        self.at += 1;
        let Some(cmp) = self.comparison() else {
            return Err(self.err(format!(
                "expected an operator (== != < <= > >= ~ matches contains), found {}",
                describe(self.peek())
            )));
        };
        self.at += 1;
        let value = match self.peek().clone() {
            Tok::Str(s) => Value::String(s),
            Tok::Num(n) => serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
            Tok::Ident(w) if w == "true" => Value::Bool(true),
            Tok::Ident(w) if w == "false" => Value::Bool(false),
            Tok::Ident(w) if w == "null" => Value::Null,
            other => {
                return Err(self.err(format!(
                    "expected a value ('text', a number, true, false, null), found {}",
                    describe(&other)
                )));
            }
        };
        let regex = if cmp == Cmp::Regex {
            let Value::String(pattern) = &value else {
                return Err(self.err("~ needs a quoted regular expression".into()));
            };
            Some(self.regex(pattern)?)
        } else {
            None
        };
        self.at += 1;
        Ok(Node::Test {
            left: Operand::Field(field),
            cmp,
            right: Operand::Lit(value),
            regex,
        })
    }
}

fn describe(tok: &Tok) -> String {
    match tok {
        Tok::End => "the end".into(),
        Tok::Ident(w) => format!("{w:?}"),
        Tok::Var(v) => format!("${{{v}}}"),
        Tok::Str(s) => format!("'{s}'"),
        Tok::Num(n) => n.to_string(),
        Tok::Op(o) => format!("{o:?}"),
        Tok::LParen => "'('".into(),
        Tok::RParen => "')'".into(),
    }
}

impl ItemFilter {
    /// Parses an expression.
    pub fn parse(expr: &str) -> Result<ItemFilter, FilterError> {
        ItemFilter::parse_mode(expr, Mode::Dlq, None)
    }

    /// Parses an expression over a work item's data: every field is a path into the item
    /// (`a.b`, or `item.a.b`).
    pub fn parse_data(expr: &str) -> Result<ItemFilter, FilterError> {
        ItemFilter::parse_mode(expr, Mode::Data, None)
    }

    /// Parses a step's condition (`when:`): the same language over `${…}` variables and
    /// literals (`${item.kind} == 'fix' && ${map.failed} < 3`), where a bare operand is
    /// true or false itself (`${tests_passed}`). `resolve` gives each variable its index,
    /// or refuses it. The text is parsed once: a variable's value is a value, never more
    /// of the expression.
    pub fn parse_condition(expr: &str, resolve: Resolve<'_>) -> Result<ItemFilter, FilterError> {
        ItemFilter::parse_mode(expr, Mode::Condition, Some(resolve))
    }

    fn parse_mode(
        expr: &str,
        mode: Mode,
        resolve: Option<Resolve<'_>>,
    ) -> Result<ItemFilter, FilterError> {
        let toks = lex(expr, mode)?;
        let mut parser = Parser {
            expr,
            toks,
            at: 0,
            needs_item: false,
            mode,
            resolve,
            depth: 0,
        };
        if *parser.peek() == Tok::End {
            return Err(parser.err("the filter is empty".into()));
        }
        let root = parser.or()?;
        if *parser.peek() != Tok::End {
            return Err(parser.err(format!("unexpected {}", describe(parser.peek()))));
        }
        Ok(ItemFilter {
            root,
            needs_item: parser.needs_item,
        })
    }

    /// Evaluates a condition with the variables' values (`value(index)`). Values compare
    /// as they are typed, except that text holding a number or `true`/`false` compares
    /// with a number or a boolean as one (captures are text). A bare operand that is not
    /// true or false, and an order between values that have none, are errors.
    pub fn eval_condition(
        &self,
        value: &dyn Fn(usize) -> Result<Value, String>,
    ) -> Result<bool, String> {
        eval(&self.root, &|_| Value::Null, value, true)
    }

    /// True when the filter reads fields that only the item object has (`item.*`,
    /// `error_message`).
    pub fn needs_item(&self) -> bool {
        self.needs_item
    }

    /// Tests a summary; fields it lacks are null (see [`Self::needs_item`]).
    pub fn matches_summary(&self, id: &str, s: &ItemSummary) -> bool {
        eval(
            &self.root,
            &|field: &[String]| summary_field(id, s, field),
            &no_vars,
            false,
        )
        .unwrap_or(false)
    }

    /// Tests a work item (for filters made by [`Self::parse_data`]); a missing field is
    /// null.
    pub fn matches_data(&self, data: &Value) -> bool {
        let get = |field: &[String]| {
            field[1..]
                .iter()
                .try_fold(data, |v, k| v.get(k))
                .cloned()
                .unwrap_or(Value::Null)
        };
        eval(&self.root, &get, &no_vars, false).unwrap_or(false)
    }

    /// Tests a full item.
    pub fn matches_item(&self, item: &DeadLetteredItem, s: &ItemSummary) -> bool {
        let get = |field: &[String]| match field[0].as_str() {
            "item" => field[1..]
                .iter()
                .try_fold(&item.item_data, |v, k| v.get(k))
                .cloned()
                .unwrap_or(Value::Null),
            "error_message" => item
                .failure_history
                .last()
                .map_or(Value::Null, |f| Value::String(f.error_message.clone())),
            _ => summary_field(&item.item_id, s, field),
        };
        eval(&self.root, &get, &no_vars, false).unwrap_or(false)
    }
}

fn summary_field(id: &str, s: &ItemSummary, field: &[String]) -> Value {
    match field[0].as_str() {
        "item_id" => Value::String(id.to_owned()),
        "error_type" => Value::String(s.error_type.name().to_owned()),
        "failure_count" => Value::from(s.failure_count),
        "first_attempt" => Value::String(s.first_attempt.clone()),
        "last_attempt" => Value::String(s.last_attempt.clone()),
        "error_signature" => Value::String(s.error_signature.clone()),
        "reprocess_eligible" => Value::Bool(s.reprocess_eligible),
        "manual_review_required" => Value::Bool(s.manual_review_required),
        _ => Value::Null,
    }
}

fn no_vars(_: usize) -> Result<Value, String> {
    Err("no variables here".into())
}

/// `strict` (conditions): loose typing of text, and errors where a filter says false.
fn eval(
    node: &Node,
    get: &dyn Fn(&[String]) -> Value,
    var: &dyn Fn(usize) -> Result<Value, String>,
    strict: bool,
) -> Result<bool, String> {
    let operand = |o: &Operand| -> Result<Value, String> {
        Ok(match o {
            Operand::Field(f) => get(f),
            Operand::Lit(v) => v.clone(),
            Operand::Var(i) => var(*i)?,
        })
    };
    Ok(match node {
        Node::And(terms) => {
            for t in terms {
                if !eval(t, get, var, strict)? {
                    return Ok(false);
                }
            }
            true
        }
        Node::Or(terms) => {
            for t in terms {
                if eval(t, get, var, strict)? {
                    return Ok(true);
                }
            }
            false
        }
        Node::Not(a) => !eval(a, get, var, strict)?,
        Node::Truth(o) => match operand(o)? {
            Value::Bool(b) => b,
            Value::String(s) if s.trim().eq_ignore_ascii_case("true") => true,
            Value::String(s) if s.trim().eq_ignore_ascii_case("false") => false,
            other => {
                return Err(format!(
                    "{} is neither true nor false",
                    preview(&other.to_string())
                ));
            }
        },
        Node::Test {
            left,
            cmp,
            right,
            regex,
        } => {
            let (mut a, mut b) = (operand(left)?, operand(right)?);
            if strict {
                let loose_a = loosen(a.clone(), &b);
                b = loosen(b, &a);
                a = loose_a;
                if matches!(cmp, Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge)
                    && !matches!(
                        (&a, &b),
                        (Value::Number(_), Value::Number(_)) | (Value::String(_), Value::String(_))
                    )
                {
                    return Err(format!(
                        "{} and {} have no order (compare numbers, or text with text)",
                        preview(&a.to_string()),
                        preview(&b.to_string())
                    ));
                }
            }
            compare(&a, *cmp, &b, regex.as_ref())
        }
    })
}

/// Text that holds a number or a boolean, beside a number or a boolean, as one.
fn loosen(v: Value, other: &Value) -> Value {
    match (&v, other) {
        (Value::String(s), Value::Number(_)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(v, Value::Number),
        (Value::String(s), Value::Bool(_)) => match s.trim().to_ascii_lowercase().as_str() {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => v,
        },
        _ => v,
    }
}

fn compare(actual: &Value, cmp: Cmp, want: &Value, regex: Option<&Regex>) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match cmp {
        Cmp::Regex => regex.is_some_and(|r| !actual.is_null() && r.is_match(&text(actual))),
        Cmp::Contains => match actual {
            Value::Array(items) => items.iter().any(|v| v == want || text(v) == text(want)),
            Value::Null => false,
            other => text(other).contains(&text(want)),
        },
        Cmp::Eq | Cmp::Ne => {
            let equal = match (actual, want) {
                (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
                (a, b) => a == b,
            };
            equal == (cmp == Cmp::Eq)
        }
        Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge => {
            let order = match (actual, want) {
                (Value::Number(a), Value::Number(b)) => a.as_f64().partial_cmp(&b.as_f64()),
                (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
                _ => None,
            };
            order.is_some_and(|o| match cmp {
                Cmp::Lt => o.is_lt(),
                Cmp::Le => o.is_le(),
                Cmp::Gt => o.is_gt(),
                _ => o.is_ge(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dlq::ErrorType;

    fn summary() -> ItemSummary {
        ItemSummary {
            object: crate::store::object::ObjectId::ZERO,
            failure_count: 3,
            error_type: ErrorType::Timeout,
            first_attempt: "2026-01-01T00:00:00.000000Z".into(),
            last_attempt: "2026-01-02T00:00:00.000000Z".into(),
            error_signature: "timeout: agent timed out after <n>s".into(),
            reprocess_eligible: true,
            manual_review_required: true,
            name: None,
        }
    }

    #[test]
    fn evaluates() {
        let s = summary();
        let yes = |e: &str| {
            assert!(
                ItemFilter::parse(e).unwrap().matches_summary("item-7", &s),
                "{e}"
            )
        };
        let no = |e: &str| {
            assert!(
                !ItemFilter::parse(e).unwrap().matches_summary("item-7", &s),
                "{e}"
            )
        };
        yes("error_type == 'timeout'");
        yes("failure_count >= 3 && reprocess_eligible == true");
        yes("failure_count > 5 || item_id == \"item-7\"");
        yes("not (failure_count < 2) and error_signature ~ 'timed out'");
        yes("last_attempt > '2026-01-01'");
        yes("item_id contains 'em-'");
        no("error_type != 'timeout'");
        no("failure_count == 2");
        no("!(reprocess_eligible == true)");
    }

    #[test]
    fn malformed_filters_name_the_column_and_never_match_all() {
        for (expr, column, what) in [
            ("error_type = 'x'", 12, "unexpected character '='"),
            ("error_type == 'x", 15, "unbalanced quote"),
            ("bogus == 1", 1, "unknown field"),
            ("failure_count >", 16, "expected a value"),
            ("(failure_count > 1", 19, "expected ')'"),
            ("failure_count > 1 extra", 19, "unexpected \"extra\""),
            ("failure_count like 1", 15, "expected an operator"),
            ("", 1, "empty"),
            ("item. == 1", 1, "unknown field"),
            (
                "error_type ~ '('",
                14,
                "bad regular expression: unclosed group",
            ),
        ] {
            let err = ItemFilter::parse(expr).unwrap_err();
            assert_eq!(err.column, column, "{expr}: {err}");
            assert!(err.message.contains(what), "{expr}: {err}");
        }
    }
}
