//! A token-level estimate of how deep an expression nests, made before
//! parsing: the parser and the evaluator recurse once per level, so a deep
//! expression must be turned away before it reaches them.

use crate::error::Position;

/// Where the nesting first went past the limit.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TooDeep {
    pub(crate) position: Position,
}

/// Scans `source` and fails at the first place where it nests deeper than
/// `limit`; returns the deepest nesting otherwise.
///
/// The depth at a point is the number of open brackets (`(`, `[`, `{`) plus,
/// for each of them and for the top level, the operators chained so far in
/// the current term: every operator, `.` and `in` counts one. `,`, `&&` and
/// `||` start a new term: the parser reads those lists in a loop, and CEL
/// balances `&&` and `||` chains, so they don't nest. This over-estimates
/// the depth of the syntax tree, never under-estimates it.
pub(crate) fn check(source: &str, limit: usize) -> Result<usize, TooDeep> {
    let mut scanner = Scanner {
        chars: source.chars().collect(),
        at: 0,
        line: 1,
        column: 1,
        terms: vec![0],
        chained: 0,
        deepest: 0,
        limit,
    };
    scanner.run()?;
    Ok(scanner.deepest)
}

struct Scanner {
    chars: Vec<char>,
    at: usize,
    line: u32,
    column: u32,
    /// Operators chained in the current term, per open bracket; the first
    /// entry is the top level.
    terms: Vec<usize>,
    /// The sum of `terms`.
    chained: usize,
    deepest: usize,
    limit: usize,
}

impl Scanner {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.at + ahead).copied()
    }

    fn bump(&mut self) {
        if let Some(c) = self.peek(0) {
            self.at += 1;
            if c == '\n' {
                self.line = self.line.saturating_add(1);
                self.column = 1;
            } else {
                self.column = self.column.saturating_add(1);
            }
        }
    }

    fn position(&self) -> Position {
        Position {
            line: self.line,
            column: self.column,
        }
    }

    /// Records the depth here; fails past the limit.
    fn measure(&mut self) -> Result<(), TooDeep> {
        let depth = self.terms.len() - 1 + self.chained;
        self.deepest = self.deepest.max(depth);
        if depth > self.limit {
            return Err(TooDeep {
                position: self.position(),
            });
        }
        Ok(())
    }

    fn chain(&mut self) -> Result<(), TooDeep> {
        if let Some(last) = self.terms.last_mut() {
            *last += 1;
            self.chained += 1;
        }
        self.measure()
    }

    fn new_term(&mut self) {
        if let Some(last) = self.terms.last_mut() {
            self.chained -= *last;
            *last = 0;
        }
    }

    fn run(&mut self) -> Result<(), TooDeep> {
        while let Some(c) = self.peek(0) {
            match c {
                '(' | '[' | '{' => {
                    self.terms.push(0);
                    self.measure()?;
                    self.bump();
                }
                ')' | ']' | '}' => {
                    // An unbalanced closer is the parser's to report.
                    if self.terms.len() > 1
                        && let Some(last) = self.terms.pop()
                    {
                        self.chained -= last;
                    }
                    self.bump();
                }
                ',' => {
                    self.new_term();
                    self.bump();
                }
                '&' | '|' => {
                    if self.peek(1) == Some(c) {
                        self.new_term();
                        self.bump();
                    }
                    self.bump();
                }
                '/' if self.peek(1) == Some('/') => {
                    while self.peek(0).is_some_and(|c| c != '\n') {
                        self.bump();
                    }
                }
                '\'' | '"' => self.string(false),
                '?' => {
                    // `a.?b` is an optional field selection, counted at `.`
                    let optional = self.at > 0 && self.chars[self.at - 1] == '.';
                    self.bump();
                    if !optional {
                        self.chain()?;
                    }
                }
                '=' | '!' | '<' | '>' => {
                    self.bump();
                    if self.peek(0) == Some('=') {
                        self.bump();
                    }
                    self.chain()?;
                }
                '+' | '-' | '*' | '%' | '/' | '.' => {
                    self.bump();
                    self.chain()?;
                }
                c if c.is_alphabetic() || c == '_' => self.word()?,
                _ => self.bump(),
            }
        }
        Ok(())
    }

    /// An identifier or keyword, and the string it prefixes if it is `r`,
    /// `b`, `rb` or `br`.
    fn word(&mut self) -> Result<(), TooDeep> {
        let start = self.at;
        while self.peek(0).is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.bump();
        }
        let word: String = self.chars[start..self.at].iter().collect();
        let word = word.to_ascii_lowercase();
        if matches!(self.peek(0), Some('\'' | '"')) && matches!(word.as_str(), "r" | "b" | "rb" | "br") {
            self.string(word.contains('r'));
        } else if word == "in" {
            self.chain()?;
        }
        Ok(())
    }

    /// A string or bytes literal, single- or triple-quoted; the scanner is
    /// at its opening quote.
    fn string(&mut self, raw: bool) {
        let Some(quote) = self.peek(0) else { return };
        let triple = self.peek(1) == Some(quote) && self.peek(2) == Some(quote);
        let quotes = if triple { 3 } else { 1 };
        for _ in 0..quotes {
            self.bump();
        }
        while let Some(c) = self.peek(0) {
            if c == '\\' && !raw {
                self.bump();
                self.bump();
                continue;
            }
            if c == quote && (!triple || (self.peek(1) == Some(quote) && self.peek(2) == Some(quote))) {
                for _ in 0..quotes {
                    self.bump();
                }
                return;
            }
            if c == '\n' && !triple {
                // unterminated: the parser reports it
                return;
            }
            self.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(source: &str) -> usize {
        check(source, usize::MAX).expect("no limit")
    }

    #[test]
    fn brackets_and_chained_operators_count() {
        assert_eq!(depth("a"), 0);
        assert_eq!(depth("a.b.c + d"), 3);
        assert_eq!(depth("f(g(h(1)))"), 3);
        assert_eq!(depth("[[[1]]]"), 3);
        assert_eq!(depth("{'a': {'b': 1}}"), 2);
        assert_eq!(depth("a == 1 ? b : c"), 2);
        assert_eq!(depth("x in [1, 2]"), 2);
        assert_eq!(depth("-1"), 1);
        assert_eq!(depth("a <= b"), 1);
    }

    #[test]
    fn terms_of_and_or_and_lists_do_not_add_up() {
        assert_eq!(depth("a == 1 && b == 2 && c == 3 || d == 4"), 1);
        assert_eq!(depth("f(a.b, c.d, e.f)"), 2);
    }

    #[test]
    fn strings_and_comments_are_skipped() {
        assert_eq!(depth("'((((' + \"))))\""), 1);
        assert_eq!(depth("r'\\(' == b\"[\""), 1);
        assert_eq!(depth("'''a ' ( ''' == 'it\\'s ('"), 1);
        assert_eq!(depth("a // ((((\n"), 0);
        assert_eq!(depth("a.?b.?c"), 2);
    }

    #[test]
    fn the_first_place_past_the_limit_is_reported() {
        let error = check("f(\n  ((1)))", 2).expect_err("3 deep");
        assert_eq!(error.position, Position { line: 2, column: 4 });
        assert_eq!(check(&"(".repeat(100_000), 32).map_err(|e| e.position.column), Err(33));
    }

    #[test]
    fn unbalanced_and_unterminated_input_is_left_to_the_parser() {
        assert_eq!(depth(")))a"), 0);
        assert_eq!(depth("'abc"), 0);
        assert_eq!(depth("((("), 3);
    }
}
