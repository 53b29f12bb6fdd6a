//! Each workload's log: its stdout and stderr lines and the runtime's and agent's
//! events about it, numbered, the most recent [`CAPACITY`] kept in memory; followers
//! are woken as lines arrive.

use std::collections::VecDeque;
use std::sync::Mutex;

use cvm_proto::agent::{LogLine, LogStream};
use tokio::sync::watch;

/// Lines kept per workload.
pub const CAPACITY: usize = 4096;
/// Longest line kept (a longer one is cut, and says so).
pub const MAX_LINE: usize = 8 << 10;

/// One workload's log.
#[derive(Debug)]
pub struct LogBuffer {
    lines: Mutex<VecDeque<LogLine>>,
    /// The next sequence number; followers watch it.
    next: watch::Sender<u64>,
}

impl Default for LogBuffer {
    fn default() -> Self {
        Self {
            lines: Mutex::new(VecDeque::new()),
            next: watch::channel(0).0,
        }
    }
}

impl LogBuffer {
    /// Append a line.
    pub fn push(&self, stream: LogStream, text: &str) {
        let mut text = text.trim_end_matches(['\n', '\r']).to_owned();
        if text.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push_str(" [line cut]");
        }
        let Ok(mut lines) = self.lines.lock() else {
            return;
        };
        let seq = *self.next.borrow();
        lines.push_back(LogLine {
            seq,
            time_ms: crate::workloads::now_ms(),
            stream,
            text,
        });
        if lines.len() > CAPACITY {
            lines.pop_front();
        }
        self.next.send_replace(seq + 1);
    }

    /// The lines from `since` on (the oldest kept, if `since` was dropped).
    pub fn since(&self, since: u64) -> Vec<LogLine> {
        self.lines
            .lock()
            .map(|l| l.iter().filter(|x| x.seq >= since).cloned().collect())
            .unwrap_or_default()
    }

    /// Woken whenever a line is appended.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.next.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_bounded_and_cut() {
        let b = LogBuffer::default();
        for i in 0..(CAPACITY + 10) {
            b.push(LogStream::Stdout, &format!("line {i}\n"));
        }
        let all = b.since(0);
        assert_eq!(all.len(), CAPACITY);
        assert_eq!(all[0].seq, 10);
        assert_eq!(all[0].text, "line 10");
        assert_eq!(b.since(CAPACITY as u64 + 8).len(), 2);
        b.push(LogStream::Stderr, &"é".repeat(MAX_LINE));
        let last = b.since(CAPACITY as u64 + 10).pop().unwrap();
        assert!(last.text.ends_with(" [line cut]"));
        assert!(last.text.len() <= MAX_LINE + 11);
    }
}
