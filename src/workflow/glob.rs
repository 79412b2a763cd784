//! Globs over repository paths, for `outputs: {file_pattern}` and `${step.files_added:GLOB}`:
//! `*` is any run of characters but `/`, `**` any run at all, `?` one character but `/`;
//! everything else is itself. A pattern without a `/` is matched against a path's file
//! name (`*.md` finds `specs/a.md`), one with a `/` against the whole path.

/// True when `path` matches `pattern`.
pub fn matches(pattern: &str, path: &str) -> bool {
    let subject = if pattern.contains('/') {
        path
    } else {
        path.rsplit('/').next().unwrap_or(path)
    };
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = subject.chars().collect();
    glob(&p, &s)
}

/// Dynamic programming over (pattern position, subject position): paths are short, and
/// no pattern can make it exponential.
fn glob(p: &[char], s: &[char]) -> bool {
    // ok[i][j]: p[i..] matches s[j..].
    let mut ok = vec![vec![false; s.len() + 1]; p.len() + 1];
    ok[p.len()][s.len()] = true;
    for i in (0..p.len()).rev() {
        let deep = p[i] == '*' && p.get(i + 1) == Some(&'*');
        for j in (0..=s.len()).rev() {
            ok[i][j] = match p[i] {
                '*' if deep => ok[i + 2][j] || (j < s.len() && ok[i][j + 1]),
                // The second star of a `**` is its first's business.
                '*' if i > 0 && p[i - 1] == '*' => ok[i + 1][j],
                '*' => ok[i + 1][j] || (j < s.len() && s[j] != '/' && ok[i][j + 1]),
                '?' => j < s.len() && s[j] != '/' && ok[i + 1][j + 1],
                c => j < s.len() && s[j] == c && ok[i + 1][j + 1],
            };
        }
    }
    ok[0][0]
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn globs_match_names_or_paths() {
        for (pattern, path, want) in [
            ("*.md", "specs/12-a.md", true),
            (
                "*-coverage-improvements.md",
                "specs/3-coverage-improvements.md",
                true,
            ),
            ("*.md", "specs/a.rs", false),
            ("specs/*.md", "specs/a.md", true),
            ("specs/*.md", "specs/x/a.md", false),
            ("specs/**.md", "specs/x/a.md", true),
            ("src/**/*.rs", "src/a/b/c.rs", true),
            ("a?c", "abc", true),
            ("a?c", "a/c", false),
            ("README.md", "docs/README.md", true),
            ("*", "", true),
            ("", "x", false),
        ] {
            assert_eq!(matches(pattern, path), want, "{pattern} ~ {path}");
        }
    }
}
