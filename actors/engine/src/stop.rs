//! Stop strings over streamed text: a piece of text is released only once no stop string can
//! begin inside it, so a client never receives the first half of a stop string.
//!
//! Decides: what text is safe to send and where the output ends. Leaves to the engine which
//! strings to look for (the request's `stop`) and what ending generation means.

/// Text held back until it cannot be the start of a stop string.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
    /// The stop string that ended the output, once one did.
    matched: Option<String>,
}

/// What one piece of new text produced.
#[derive(Debug, PartialEq, Eq)]
pub struct StopOutcome {
    /// Text that may be sent now.
    pub release: String,
    /// A stop string was found: `release` ends right before it and generation must end.
    pub stopped: bool,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
            matched: None,
        }
    }

    /// The stop string that ended the output, if one did.
    pub fn matched(&self) -> Option<&str> {
        self.matched.as_deref()
    }

    /// Adds newly decoded text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome {
                release: std::mem::take(&mut self.held),
                stopped: false,
            };
        }
        // The earliest stop string occurrence ends the output.
        if let Some((at, which)) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, _)| at)
        {
            self.matched = Some(which.clone());
            self.held.truncate(at);
            return StopOutcome {
                release: std::mem::take(&mut self.held),
                stopped: true,
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_suffix_prefix(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let rest = self.held.split_off(cut);
        StopOutcome {
            release: std::mem::replace(&mut self.held, rest),
            stopped: false,
        }
    }

    /// Everything still held (generation ended for another reason).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

/// Bytes of the longest suffix of `text` that is a proper prefix of `stop`, at a character
/// boundary of both.
fn longest_suffix_prefix(text: &str, stop: &str) -> usize {
    let max = (stop.len() - 1).min(text.len());
    (1..=max)
        .rev()
        .find(|&n| {
            text.is_char_boundary(text.len() - n)
                && stop.is_char_boundary(n)
                && text.ends_with(&stop[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let o = m.push(p);
            out.push_str(&o.release);
            if o.stopped {
                return (out, true);
            }
        }
        out.push_str(&m.flush());
        (out, false)
    }

    #[test]
    fn stop_split_across_pieces_is_never_sent() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abc E").release, "abc ");
        assert_eq!(m.push("N").release, "");
        assert_eq!(
            m.push("D tail"),
            StopOutcome {
                release: String::new(),
                stopped: true
            }
        );
    }

    #[test]
    fn false_starts_are_released() {
        assert_eq!(run(&["END"], &["E", "N", "x"]), ("ENx".into(), false));
        assert_eq!(run(&["\n\n"], &["a\n", "b\n"]), ("a\nb\n".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["zz", "b"], &["aazzb"]), ("aa".into(), true));
        let mut m = StopMatcher::new(vec!["zz".into(), "b".into()]);
        m.push("aab zz");
        assert_eq!(m.matched(), Some("b"));
        assert_eq!(run(&["é!"], &["caf", "é", "!"]), ("caf".into(), true));
    }

    #[test]
    fn no_stops_releases_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), false));
        assert_eq!(run(&[""], &["a"]), ("a".into(), false));
    }
}
