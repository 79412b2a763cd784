//! Where each `${…}` of a shell step stands in its command, and how a value is written there
//! so that the shell reads the value's exact text and never runs it (issue 19).
//!
//! The command's literal text is scanned as `sh` reads it — words, quotes, `$(…)`,
//! `$((…))`, backticks, the shell's own `${…}`, comments and here-documents — and each of
//! our variables gets the [`Slot`] it stands in:
//!
//! | slot | the value is written |
//! |---|---|
//! | a word (outside quotes) | as one word: as it is when it holds only `A-Za-z0-9_-./:@%+,`, else single-quoted |
//! | inside `"…"` | with `\`, `"`, `$` and `` ` `` escaped |
//! | inside `'…'` | with each `'` closed, escaped and reopened (`'\''`) |
//! | inside `$'…'` (a shell that has it) | with `\` and `'` escaped |
//! | a here-document body | with `\`, `$` and `` ` `` escaped (as it is under a quoted delimiter); a line equal to the delimiter is an error |
//! | a comment | with line breaks made spaces |
//! | inside `$((…))` | only an integer |
//!
//! A variable the scanner cannot place (inside backticks, inside the shell's own `${…}`,
//! after a backslash, in a here-document's delimiter, in a quote the command never closes)
//! is an error when the workflow is loaded. `${name|raw}` opts out: the value is pasted as
//! it is, to be run as code.

use std::borrow::Cow;

/// Where a variable stands in a shell command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// A word, or part of one, outside quotes.
    Word,
    /// Inside double quotes.
    Double,
    /// Inside single quotes.
    Single,
    /// Inside `$'…'`, in a shell that has ANSI-C quoting.
    AnsiC,
    /// In a here-document's body.
    Heredoc {
        /// The line that ends it.
        delimiter: String,
        /// `<<-`: leading tabs are stripped before the comparison.
        strip_tabs: bool,
        /// The delimiter was unquoted: `$`, `` ` `` and `\` are special in the body.
        expanding: bool,
    },
    /// In a comment.
    Comment,
    /// Inside `$((…))`.
    Arith,
    /// `${name|raw}`: pasted as it is.
    Raw,
}

/// A piece of a command: literal text, or one of our variables.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'a> {
    /// Text of the command.
    Lit(&'a str),
    /// A variable, by its index among the command's variables.
    Var,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Sym {
    C(char),
    V,
}

#[derive(Debug)]
enum Frame {
    /// Commands: the top level, or inside `$(…)` (`sub`), `(` nesting `depth` deep.
    Code {
        sub: bool,
        depth: usize,
    },
    Double,
    Single,
    AnsiC,
    Backtick,
    Param {
        depth: usize,
    },
    Arith {
        depth: usize,
    },
    Comment,
    Heredoc(Heredoc),
}

#[derive(Debug, Clone)]
struct Heredoc {
    delimiter: String,
    strip_tabs: bool,
    expanding: bool,
}

/// True when the `sh` steps run under reads `$'…'` as ANSI-C quoting (bash, zsh, recent
/// dash do; Debian 12's dash does not), asked once per process.
pub fn sh_has_ansi_c() -> bool {
    static ANSWER: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ANSWER.get_or_init(|| {
        std::process::Command::new("sh")
            .args(["-c", r"printf %s $'\101'"])
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .output()
            .is_ok_and(|o| o.stdout == b"A")
    })
}

/// Shells whose `-c` string is code (by the last part of the program's path).
const SHELLS: &[&str] = &["sh", "bash", "zsh", "dash", "ksh", "mksh", "ash", "fish"];

/// Refuses a variable that a second shell would read as code: one in the command string
/// of `sh -c` (any of [`SHELLS`], `-c` alone or among other one-letter flags, as `-lc`;
/// behind `timeout`, `find -exec`, `xargs`, `docker exec` alike) or among the arguments of
/// `eval`. Quoting makes the step's shell hand the value over as its exact text, and the
/// second shell then runs that text (a sixth sweep ran an item's `$(…)` so). Passing the
/// value as an argument after the string (`sh -c '… "$1"' sh ${item}`), or through the
/// environment, keeps it data; `${NAME|raw}` says the author means it as code.
pub fn second_shell(pieces: &[Piece<'_>]) -> Result<(), String> {
    let mut words: Vec<(String, bool)> = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut has_var) = (false, false);
    let mut line = 1;
    let check = |words: &[(String, bool)], line: usize| -> Result<(), String> {
        let n = words.len();
        let Some((_, true)) = words.last() else {
            return Ok(());
        };
        let at = if line > 1 {
            format!(" (line {line} of the command)")
        } else {
            String::new()
        };
        let command = words.iter().position(|(w, _)| {
            !(matches!(w.as_str(), "then" | "do" | "else" | "!" | "time" | "{")
                || w.split_once('=').is_some_and(|(k, _)| is_name(k)))
        });
        if command.is_some_and(|i| i + 1 < n && words[i].0 == "eval") {
            return Err(format!(
                "a variable among the arguments of eval{at} would run as code: pass it \
                 through the environment, or write ${{NAME|raw}} to run it as code knowingly"
            ));
        }
        let c_flag = |w: &str| {
            w.strip_prefix('-').is_some_and(|f| {
                !f.is_empty()
                    && f.len() <= 4
                    && f.bytes().all(|b| b.is_ascii_alphabetic())
                    && f.contains('c')
            })
        };
        if n >= 3
            && c_flag(&words[n - 2].0)
            && words[..n - 2]
                .iter()
                .any(|(w, _)| SHELLS.contains(&w.rsplit('/').next().unwrap_or(w)))
        {
            return Err(format!(
                "a variable in the command string of `{} {}`{at} would run as code in that \
                 second shell: pass it as an argument after the string (sh -c '… \"$1\"' \
                 sh ${{item}}) or through the environment, or write ${{NAME|raw}} to run it \
                 as code knowingly",
                words[..n - 2]
                    .iter()
                    .rev()
                    .find(|(w, _)| SHELLS.contains(&w.rsplit('/').next().unwrap_or(w)))
                    .map_or("sh", |(w, _)| w.as_str()),
                words[n - 2].0
            ));
        }
        Ok(())
    };
    let mut syms = pieces.iter().flat_map(|p| match p {
        Piece::Lit(text) => text.chars().map(Some).collect::<Vec<_>>(),
        Piece::Var => vec![None],
    });
    let mut quote: Option<char> = None;
    while let Some(sym) = syms.next() {
        let Some(c) = sym else {
            in_word = true;
            has_var = true;
            continue;
        };
        if c == '\n' {
            line += 1;
        }
        match quote {
            Some('\'') if c == '\'' => quote = None,
            Some('"') if c == '"' => quote = None,
            Some('"') if c == '\\' => {
                if let Some(Some(next)) = syms.next() {
                    word.push(next);
                }
            }
            Some(_) => word.push(c),
            None => match c {
                '\'' | '"' => {
                    quote = Some(c);
                    in_word = true;
                }
                '\\' => {
                    in_word = true;
                    match syms.next() {
                        Some(Some('\n')) => line += 1,
                        Some(Some(next)) => word.push(next),
                        Some(None) => has_var = true,
                        None => {}
                    }
                }
                '#' if !in_word => {
                    // A comment, to the end of its line.
                    for s in syms.by_ref() {
                        if s == Some('\n') {
                            line += 1;
                            break;
                        }
                    }
                    check(&words, line)?;
                    words.clear();
                }
                ' ' | '\t' | '\n' | ';' | '&' | '|' | '(' | ')' => {
                    if in_word {
                        words.push((std::mem::take(&mut word), has_var));
                        check(&words, line)?;
                        (in_word, has_var) = (false, false);
                    }
                    if !matches!(c, ' ' | '\t') {
                        words.clear();
                    }
                }
                _ => {
                    in_word = true;
                    word.push(c);
                }
            },
        }
    }
    if in_word {
        words.push((word, has_var));
        check(&words, line)?;
    }
    Ok(())
}

fn is_name(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The slot of each variable in `pieces` (in order); `ansi_c` says whether the shell reads
/// `$'…'`. An error says what the scanner cannot place, and on which line of the command.
pub fn place(pieces: &[Piece<'_>], ansi_c: bool) -> Result<Vec<Slot>, String> {
    let mut syms = Vec::new();
    for piece in pieces {
        match piece {
            Piece::Lit(text) => syms.extend(text.chars().map(Sym::C)),
            Piece::Var => syms.push(Sym::V),
        }
    }
    Scanner {
        syms,
        at: 0,
        line: 1,
        frames: vec![Frame::Code {
            sub: false,
            depth: 0,
        }],
        pending: Vec::new(),
        word_start: true,
        line_start: true,
        ansi_c,
        slots: Vec::new(),
        unmodelled: None,
    }
    .run()
}

struct Scanner {
    syms: Vec<Sym>,
    at: usize,
    line: usize,
    frames: Vec<Frame>,
    /// Here-documents whose bodies start at the next line break.
    pending: Vec<Heredoc>,
    /// At the start of a word (where `#` starts a comment).
    word_start: bool,
    /// At the start of a line (where a here-document may end).
    line_start: bool,
    ansi_c: bool,
    slots: Vec<Slot>,
    /// Why no variable from here on can be placed: text was read whose meaning to `sh`
    /// the scanner does not follow (a `case` inside `$(…)`, whose patterns' `)` would close
    /// the `$(` here while `sh` reads on; an `alias`; a `${…}` holding `$(…)` or quotes).
    unmodelled: Option<&'static str>,
}

impl Scanner {
    fn peek(&self, ahead: usize) -> Option<Sym> {
        self.syms.get(self.at + ahead).copied()
    }

    fn is(&self, ahead: usize, c: char) -> bool {
        self.peek(ahead) == Some(Sym::C(c))
    }

    fn err(&self, what: &str) -> String {
        let line = if self.line > 1 {
            format!(" (line {} of the command)", self.line)
        } else {
            String::new()
        };
        format!(
            "a variable {what}{line} cannot be quoted safely: move it out, or write \
             ${{NAME|raw}} to paste it as shell code"
        )
    }

    fn advance(&mut self, n: usize) {
        for _ in 0..n {
            if self.peek(0) == Some(Sym::C('\n')) {
                self.line += 1;
            }
            self.at += 1;
        }
    }

    fn run(mut self) -> Result<Vec<Slot>, String> {
        while let Some(sym) = self.peek(0) {
            let top = self.frames.len() - 1;
            // A here-document ends at a line that is its delimiter.
            if let Frame::Heredoc(h) = &self.frames[top]
                && self.line_start
                && let Some(len) = self.delimiter_line(h)
            {
                self.advance(len);
                self.frames.pop();
                // The line after the delimiter starts words afresh.
                self.word_start = true;
                self.next_heredoc();
                continue;
            }
            self.line_start = false;
            let c = match sym {
                Sym::V => {
                    if let Some(why) = self.unmodelled {
                        return Err(self.err(why));
                    }
                    let slot = self.slot()?;
                    self.slots.push(slot);
                    self.at += 1;
                    self.word_start = false;
                    continue;
                }
                Sym::C(c) => c,
            };
            let closes_arith = c == ')' && self.is(1, ')');
            // Quotes and `$(…)` inside the shell's `${…}` may hold a `}` that does not end
            // it: what follows is not placed.
            if matches!(self.frames[top], Frame::Param { .. })
                && (matches!(c, '"' | '\'' | '`') || (c == '$' && self.is(1, '(')))
            {
                self.unmodelled
                    .get_or_insert("after a ${…} holding $(…), a quote or a backtick");
            }
            match &mut self.frames[top] {
                Frame::Code { sub, depth } => {
                    let (sub, d) = (*sub, *depth);
                    self.code(c, sub, d)?;
                }
                Frame::Double => self.quoted(c, '"')?,
                Frame::Single => {
                    if c == '\'' {
                        self.frames.pop();
                    }
                    self.advance(1);
                }
                Frame::AnsiC | Frame::Backtick => {
                    let close = if matches!(self.frames[top], Frame::AnsiC) {
                        '\''
                    } else {
                        '`'
                    };
                    if c == '\\' {
                        self.escape()?;
                    } else {
                        if c == close {
                            self.frames.pop();
                        }
                        self.advance(1);
                    }
                }
                Frame::Param { depth } => {
                    match c {
                        '{' => *depth += 1,
                        '}' if *depth == 0 => {
                            self.frames.pop();
                        }
                        '}' => *depth -= 1,
                        _ => {}
                    }
                    self.advance(1);
                }
                Frame::Arith { depth } => {
                    match c {
                        '(' => *depth += 1,
                        ')' if *depth == 0 && closes_arith => {
                            self.frames.pop();
                            self.advance(1);
                        }
                        ')' => *depth = depth.saturating_sub(1),
                        _ => {}
                    }
                    self.advance(1);
                }
                Frame::Comment => {
                    if c == '\n' {
                        self.frames.pop();
                    } else {
                        self.advance(1);
                    }
                }
                Frame::Heredoc(h) => {
                    let expanding = h.expanding;
                    if c == '\n' {
                        self.advance(1);
                        self.line_start = true;
                    } else if expanding {
                        self.quoted(c, '\0')?;
                    } else {
                        self.advance(1);
                    }
                }
            }
        }
        if self.slots.is_empty() {
            return Ok(self.slots);
        }
        match self.frames.last() {
            Some(Frame::Code { sub: false, .. } | Frame::Comment | Frame::Heredoc(_)) => {
                Ok(self.slots)
            }
            Some(Frame::Single | Frame::Double | Frame::AnsiC | Frame::Backtick) => Err(
                "the command leaves a quote open, so where its variables stand is unclear".into(),
            ),
            _ => Err("the command leaves a $(…) or ${…} open".into()),
        }
    }

    /// The slot the variable at hand stands in.
    fn slot(&self) -> Result<Slot, String> {
        Ok(match self.frames.last() {
            Some(Frame::Code { .. }) | None => Slot::Word,
            Some(Frame::Double) => Slot::Double,
            Some(Frame::Single) => Slot::Single,
            Some(Frame::AnsiC) => Slot::AnsiC,
            Some(Frame::Comment) => Slot::Comment,
            Some(Frame::Arith { .. }) => Slot::Arith,
            Some(Frame::Heredoc(h)) => Slot::Heredoc {
                delimiter: h.delimiter.clone(),
                strip_tabs: h.strip_tabs,
                expanding: h.expanding,
            },
            Some(Frame::Backtick) => return Err(self.err("inside backticks (use $(…))")),
            Some(Frame::Param { .. }) => return Err(self.err("inside the shell's own ${…}")),
        })
    }

    /// A backslash and the symbol it escapes.
    fn escape(&mut self) -> Result<(), String> {
        if self.peek(1) == Some(Sym::V) {
            self.at += 1;
            return Err(self.err("after a backslash"));
        }
        self.advance(2.min(self.syms.len() - self.at));
        Ok(())
    }

    /// True when the symbols at hand are the word `word`, ended by a blank, a line break,
    /// `;` or the end; line continuations (`\` and a line break) inside it or after it are
    /// skipped, as `sh` removes them first.
    fn word_is(&self, word: &str) -> bool {
        let mut i = 0;
        let skip = |i: &mut usize| {
            while self.is(*i, '\\') && self.is(*i + 1, '\n') {
                *i += 2;
            }
        };
        for c in word.chars() {
            skip(&mut i);
            if !self.is(i, c) {
                return false;
            }
            i += 1;
        }
        skip(&mut i);
        matches!(self.peek(i), None | Some(Sym::C(' ' | '\t' | '\n' | ';')))
    }

    /// `$…` openings shared by code, double quotes and here-document bodies; true when one
    /// was taken.
    fn dollar(&mut self) -> bool {
        if self.is(1, '(') && self.is(2, '(') {
            self.frames.push(Frame::Arith { depth: 0 });
            self.advance(3);
        } else if self.is(1, '(') {
            self.frames.push(Frame::Code {
                sub: true,
                depth: 0,
            });
            self.advance(2);
            self.word_start = true;
        } else if self.is(1, '{') {
            self.frames.push(Frame::Param { depth: 0 });
            self.advance(2);
        } else {
            return false;
        }
        true
    }

    /// Inside double quotes (`close` = `"`) or an expanding here-document (`close` = NUL).
    fn quoted(&mut self, c: char, close: char) -> Result<(), String> {
        match c {
            '\\' => return self.escape(),
            '`' => {
                self.frames.push(Frame::Backtick);
                self.advance(1);
            }
            '$' if self.dollar() => {}
            _ if c == close => {
                self.frames.pop();
                self.advance(1);
            }
            _ => self.advance(1),
        }
        Ok(())
    }

    fn code(&mut self, c: char, sub: bool, depth: usize) -> Result<(), String> {
        let word_start = std::mem::replace(&mut self.word_start, false);
        if word_start {
            if sub && self.word_is("case") {
                self.unmodelled
                    .get_or_insert("after a `case` inside $(…) (its patterns' `)` are not read)");
            }
            if self.word_is("alias") {
                self.unmodelled
                    .get_or_insert("after an `alias` (its text may hold words and quotes)");
            }
        }
        match c {
            // A line continuation joins the lines: a word may start after it still.
            '\\' if self.is(1, '\n') => {
                self.advance(2);
                self.word_start = word_start;
            }
            '\\' => return self.escape(),
            '\'' => {
                self.frames.push(Frame::Single);
                self.advance(1);
            }
            '"' => {
                self.frames.push(Frame::Double);
                self.advance(1);
            }
            '`' => {
                self.frames.push(Frame::Backtick);
                self.advance(1);
            }
            '$' if self.ansi_c && self.is(1, '\'') => {
                self.frames.push(Frame::AnsiC);
                self.advance(2);
            }
            '$' if self.dollar() => {}
            '#' if word_start => self.frames.push(Frame::Comment),
            '<' if self.is(1, '<') && !self.is(2, '<') => self.heredoc()?,
            '<' if self.is(1, '<') => {
                // `<<<`: a here-string, an ordinary word follows.
                self.advance(3);
                self.word_start = true;
            }
            '(' => {
                if let Some(Frame::Code { depth, .. }) = self.frames.last_mut() {
                    *depth += 1;
                }
                self.advance(1);
                self.word_start = true;
            }
            ')' if sub && depth == 0 => {
                self.frames.pop();
                self.advance(1);
            }
            ')' => {
                if let Some(Frame::Code { depth, .. }) = self.frames.last_mut() {
                    *depth = depth.saturating_sub(1);
                }
                self.advance(1);
                self.word_start = true;
            }
            '\n' => {
                self.advance(1);
                self.word_start = true;
                self.next_heredoc();
            }
            ' ' | '\t' | ';' | '&' | '|' | '<' | '>' => {
                self.advance(1);
                self.word_start = true;
            }
            _ => self.advance(1),
        }
        Ok(())
    }

    /// `<<` or `<<-` and the delimiter word: queued until the line ends.
    fn heredoc(&mut self) -> Result<(), String> {
        self.advance(2);
        let strip_tabs = self.is(0, '-');
        if strip_tabs {
            self.advance(1);
        }
        while self.is(0, ' ') || self.is(0, '\t') {
            self.advance(1);
        }
        let mut delimiter = String::new();
        let mut quoted = false;
        let mut quote: Option<char> = None;
        while let Some(sym) = self.peek(0) {
            let Sym::C(c) = sym else {
                return Err(self.err("in a here-document's delimiter"));
            };
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => delimiter.push(c),
                None if c == '\'' || c == '"' => {
                    quote = Some(c);
                    quoted = true;
                }
                None if c == '\\' => {
                    quoted = true;
                    if let Some(Sym::C(next)) = self.peek(1) {
                        delimiter.push(next);
                        self.advance(1);
                    }
                }
                None if c.is_whitespace() || ";&|<>()".contains(c) => break,
                None => delimiter.push(c),
            }
            self.advance(1);
        }
        if !delimiter.is_empty() {
            self.pending.push(Heredoc {
                delimiter,
                strip_tabs,
                expanding: !quoted,
            });
        }
        self.word_start = true;
        Ok(())
    }

    /// Starts the first here-document waiting for a line break (which was just passed).
    fn next_heredoc(&mut self) {
        if !self.pending.is_empty() {
            let h = self.pending.remove(0);
            self.frames.push(Frame::Heredoc(h));
            self.line_start = true;
        }
    }

    /// When the line at hand is `h`'s delimiter: its length with the line break.
    fn delimiter_line(&self, h: &Heredoc) -> Option<usize> {
        let mut i = self.at;
        if h.strip_tabs {
            while self.syms.get(i) == Some(&Sym::C('\t')) {
                i += 1;
            }
        }
        for want in h.delimiter.chars() {
            if self.syms.get(i) != Some(&Sym::C(want)) {
                return None;
            }
            i += 1;
        }
        match self.syms.get(i) {
            None => Some(i - self.at),
            Some(Sym::C('\n')) => Some(i + 1 - self.at),
            Some(_) => None,
        }
    }
}

/// True for a value written as a word as it is: nothing the shell treats specially.
fn plain_word(value: &str) -> bool {
    !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-./:@%+,".contains(&b))
}

/// Every way [`quote`] can write `value` into a command (each slot's form; a word's is a
/// single-quoted one inside its quotes), for a mask to find it there.
pub fn written_forms(value: &str) -> Vec<String> {
    // No line of a value from the environment can be a NUL.
    let heredoc = Slot::Heredoc {
        delimiter: "\0".into(),
        strip_tabs: false,
        expanding: true,
    };
    [
        Slot::Double,
        Slot::Single,
        Slot::AnsiC,
        Slot::Comment,
        heredoc,
    ]
    .iter()
    .filter_map(|slot| quote(value, slot).ok())
    .map(Cow::into_owned)
    .collect()
}

/// `value` written for `slot`; an error when it cannot be (a here-document's delimiter line,
/// a number that is not one).
pub fn quote<'v>(value: &'v str, slot: &Slot) -> Result<Cow<'v, str>, String> {
    let escape = |special: &[char]| -> Cow<'v, str> {
        if !value.contains(special) {
            return Cow::Borrowed(value);
        }
        let mut out = String::with_capacity(value.len() + 8);
        for c in value.chars() {
            if special.contains(&c) {
                out.push('\\');
            }
            out.push(c);
        }
        Cow::Owned(out)
    };
    Ok(match slot {
        Slot::Raw => Cow::Borrowed(value),
        Slot::Word if plain_word(value) => Cow::Borrowed(value),
        Slot::Word => Cow::Owned(format!("'{}'", value.replace('\'', r"'\''"))),
        Slot::Double => escape(&['\\', '"', '$', '`']),
        Slot::Single if value.contains('\'') => Cow::Owned(value.replace('\'', r"'\''")),
        Slot::Single => Cow::Borrowed(value),
        Slot::AnsiC => escape(&['\\', '\'']),
        Slot::Comment if value.contains(['\n', '\r']) => {
            Cow::Owned(value.replace(['\n', '\r'], " "))
        }
        Slot::Comment => Cow::Borrowed(value),
        Slot::Arith => {
            let digits = value.strip_prefix('-').unwrap_or(value);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!(
                    "{} is used inside $((…)) and is not an integer",
                    crate::dlq::filter::preview(value)
                ));
            }
            Cow::Borrowed(value)
        }
        Slot::Heredoc {
            delimiter,
            strip_tabs,
            expanding,
        } => {
            let ends = value.split('\n').any(|line| {
                let line = if *strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                line == delimiter
            });
            if ends {
                return Err(format!(
                    "the value has a line {delimiter:?}, which would end the here-document \
                     it stands in"
                ));
            }
            // dash (0.5.12) drops the byte after a line's start that begins the delimiter
            // when that byte is not ASCII (`E\xa1` under `<<EOF` reads `E`): refused, so
            // a value is exact or an error whichever `sh` runs it.
            let misread = value.split('\n').find(|line| {
                let line = if *strip_tabs {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                let common = line
                    .bytes()
                    .zip(delimiter.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                common > 0 && line.as_bytes().get(common).is_some_and(|b| *b >= 0x80)
            });
            if let Some(line) = misread {
                return Err(format!(
                    "the value has a line starting {}, which dash misreads in a here-document \
                     ending at {delimiter:?}; pass it in a file or in \"…\"",
                    crate::dlq::filter::preview(&line.chars().take(12).collect::<String>())
                ));
            }
            if *strip_tabs && value.contains("\n\t") {
                return Err(
                    "the value has a line starting with a tab, which <<- would strip".into(),
                );
            }
            if *expanding {
                escape(&['\\', '$', '`'])
            } else {
                Cow::Borrowed(value)
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splits `text` at each `@` (a variable) and places the variables.
    fn slots(text: &str, ansi_c: bool) -> Result<Vec<Slot>, String> {
        let mut pieces = Vec::new();
        for (i, lit) in text.split('@').enumerate() {
            if i > 0 {
                pieces.push(Piece::Var);
            }
            pieces.push(Piece::Lit(lit));
        }
        place(&pieces, ansi_c)
    }

    /// [`second_shell`] of `text`, a variable at each `@`.
    fn second(text: &str) -> Result<(), String> {
        let mut pieces = Vec::new();
        for (i, lit) in text.split('@').enumerate() {
            if i > 0 {
                pieces.push(Piece::Var);
            }
            pieces.push(Piece::Lit(lit));
        }
        second_shell(&pieces)
    }

    #[test]
    fn a_variable_a_second_shell_would_run_is_refused() {
        for text in [
            "sh -c 'echo @'",
            "bash -lc \"make @\"",
            "/bin/sh -c echo-@",
            "timeout 60 sh -c 'run @'",
            "find . -name x -exec sh -c 'echo @' \\;",
            "docker exec box sh -c \"cat @\"",
            "echo a; eval \"echo @\"",
            "X=1 eval echo @",
            "if true; then eval @; fi",
            "echo $(bash -c 'echo @')",
            "ls &&\n  sh -c 'x @'",
        ] {
            assert!(second(text).is_err(), "{text}");
        }
        let err = second("ls\nsh -ec 'go @'").unwrap_err();
        assert!(err.contains("`sh -ec` (line 2 of the command)"), "{err}");
        for text in [
            "sh -c 'echo \"$1\"' sh @",
            "bash -c \"$CMD\" @",
            "echo sh -c",
            "echo @ | sh -c 'cat'",
            "echo 'sh -c @'",
            "echo eval @",
            "sh script.sh @",
            "git commit -c @",
            "# sh -c @\necho hi",
        ] {
            assert_eq!(second(text), Ok(()), "{text}");
        }
    }

    fn one(text: &str) -> Slot {
        let s = slots(text, false).unwrap();
        assert_eq!(s.len(), 1, "{text}");
        s[0].clone()
    }

    #[test]
    fn each_context_is_placed() {
        assert_eq!(one("echo @"), Slot::Word);
        assert_eq!(one("echo out-@.txt"), Slot::Word);
        assert_eq!(one("echo \"Processing @\""), Slot::Double);
        assert_eq!(one("echo 'Processing @ now'"), Slot::Single);
        assert_eq!(one("echo '{\"area\": \"@\"}'"), Slot::Single);
        assert_eq!(one("echo \"it's @\""), Slot::Double);
        assert_eq!(one("echo 'a' \"b\" @"), Slot::Word);
        assert_eq!(one("echo \"$(cat '@')\""), Slot::Single);
        assert_eq!(one("echo \"$(cat @)\""), Slot::Word);
        assert_eq!(one("x=$(( @ + 1 ))"), Slot::Arith);
        assert_eq!(one("echo hi # @"), Slot::Comment);
        assert_eq!(one("echo a#@"), Slot::Word);
        assert_eq!(one("echo \\\\@"), Slot::Word);
        assert_eq!(one("echo \"\\\\\" @"), Slot::Word);
        assert_eq!(
            one("cat <<EOF\nname: @\nEOF\necho done"),
            Slot::Heredoc {
                delimiter: "EOF".into(),
                strip_tabs: false,
                expanding: true
            }
        );
        assert_eq!(
            one("cat <<-'END' > f\n\tname: @\n\tEND"),
            Slot::Heredoc {
                delimiter: "END".into(),
                strip_tabs: true,
                expanding: false
            }
        );
        // After the here-document, code again.
        assert_eq!(one("cat <<EOF\nx\nEOF\necho @"), Slot::Word);
        // A here-string is not a here-document.
        assert_eq!(one("cat <<< @"), Slot::Word);
        // A `case` outside `$(…)`, or after the variable, or a word that only starts so.
        assert_eq!(one("case @ in x) echo a;; esac"), Slot::Word);
        assert_eq!(one("case x in x) echo @;; esac"), Slot::Word);
        assert_eq!(
            one("echo \"@ $(case x in x) echo a;; esac)\""),
            Slot::Double
        );
        assert_eq!(one("echo $(cases; echo @)"), Slot::Word);
        // A line continuation, then a variable; a plain `${…}` before one.
        assert_eq!(one("echo \\\n@"), Slot::Word);
        assert_eq!(one("echo ${HOME:-x} \"@\""), Slot::Double);
        // `$'…'` as the shell reads it.
        assert_eq!(slots("echo $'a\\'b' @", true).unwrap(), [Slot::Word]);
        assert_eq!(slots("echo $'a @'", true).unwrap(), [Slot::AnsiC]);
        assert_eq!(slots("echo $'a @'", false).unwrap(), [Slot::Single]);
        assert_eq!(
            slots("echo @ \"@\" '@'", false).unwrap(),
            [Slot::Word, Slot::Double, Slot::Single]
        );
    }

    #[test]
    fn what_cannot_be_placed_is_an_error() {
        for (text, want) in [
            ("echo `cat @`", "inside backticks"),
            ("echo ${HOME:-@}", "inside the shell's own"),
            ("echo \\@", "after a backslash"),
            ("echo \"\\@\"", "after a backslash"),
            ("cat <<@\nx\n", "delimiter"),
            ("echo '@", "leaves a quote open"),
            ("echo $(cat @", "open"),
            ("echo hi\necho `x @`", "(line 2 of the command)"),
            // `x)` would close the `$(` here, and `echo @` would look double-quoted.
            (
                "echo \"$(case x in x) echo @;; esac)\"",
                "after a `case` inside $(…)",
            ),
            (
                "v=$( (case x in\n x) echo a;; esac) ); echo @",
                "after a `case`",
            ),
            // The same `case` spelled with line continuations, or after a here-document.
            (
                "echo \"$(ca\\\nse x in x) echo @;; esac)\"",
                "after a `case`",
            ),
            (
                "echo \"$(\\\ncase x in x) echo @;; esac)\"",
                "after a `case`",
            ),
            (
                "echo \"$(x;\\\ncase x in x) echo @;; esac)\"",
                "after a `case`",
            ),
            (
                "echo \"$(cat <<EOF\n$(true)\nEOF\ncase x in x) echo @;; esac)\"",
                "after a `case`",
            ),
            // An alias may stand for `case`, or hold a quote.
            (
                "alias k=case\necho \"$(k x in x) echo @;; esac)\"",
                "after an `alias`",
            ),
            // A `}` inside `$(…)` or quotes in the shell's `${…}` does not end it.
            ("echo \"${y:-$(echo }; echo @)}\"", "after a ${…} holding"),
            ("echo ${y:-\"}\"} @", "after a ${…} holding"),
        ] {
            let e = slots(text, false).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
        // Without variables nothing is refused: the shell judges its own syntax.
        assert!(slots("echo 'unclosed", false).unwrap().is_empty());
    }

    #[test]
    fn values_are_written_for_their_slot() {
        let q = |v: &str, s: Slot| quote(v, &s).unwrap().into_owned();
        assert_eq!(q("file-1.txt", Slot::Word), "file-1.txt");
        assert_eq!(q("a b", Slot::Word), "'a b'");
        assert_eq!(q("", Slot::Word), "''");
        assert_eq!(q("it's", Slot::Word), r"'it'\''s'");
        assert_eq!(q("a\"$`\\b", Slot::Double), r#"a\"\$\`\\b"#);
        assert_eq!(q("it's", Slot::Single), r"it'\''s");
        assert_eq!(q("a\\'b", Slot::AnsiC), r"a\\\'b");
        assert_eq!(q("a\nb", Slot::Comment), "a b");
        assert_eq!(q("-42", Slot::Arith), "-42");
        assert!(quote("4+1", &Slot::Arith).is_err());
        let doc = Slot::Heredoc {
            delimiter: "EOF".into(),
            strip_tabs: false,
            expanding: true,
        };
        assert_eq!(q("$HOME `x` \\", doc.clone()), r"\$HOME \`x\` \\");
        assert!(quote("a\nEOF\nrm -rf /", &doc).is_err());
        assert_eq!(q("a\nEOFx", doc.clone()), "a\nEOFx");
        assert!(quote("E\u{a1}", &doc).is_err());
        assert_eq!(q("x\u{a1}", doc), "x\u{a1}");
    }
}
