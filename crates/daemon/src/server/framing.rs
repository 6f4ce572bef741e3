//! Splits a byte stream into request lines and ties passed descriptors to the
//! line they came with.
//!
//! A client sends each request line with one `sendmsg`, descriptors attached.
//! On a Unix stream socket the kernel delivers a message's descriptors with the
//! `recvmsg` that returns that message's first byte, and ends that `recvmsg`
//! there (it never glues a later message on). Such a read may still begin with
//! the tail of earlier messages, so the descriptors belong to the *last* line
//! that starts inside the bytes that read returned. That rule needs no protocol
//! extension and cannot mix up two requests' descriptors.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

/// One complete line (without the newline) and its descriptors.
#[derive(Debug)]
pub struct Line {
    pub bytes: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// What the framer yields.
#[derive(Debug)]
pub enum Frame {
    Line(Line),
    /// A line passed the size limit; its bytes (and descriptors) are being
    /// dropped up to the next newline. Yielded once per such line.
    TooLarge,
}

pub struct Framer {
    max_line: usize,
    /// Most descriptors one line may carry. Only the line in progress holds
    /// descriptors here (complete lines are cut at once), so this also bounds
    /// what one connection makes the daemon hold open.
    max_fds: usize,
    /// The line whose descriptors passed `max_fds`: they were closed, and any
    /// more that come with it are too.
    fds_overflowed: Option<u64>,
    buf: Vec<u8>,
    /// Stream offset of `buf[0]`.
    buf_start: u64,
    /// Whether the byte at `buf_start + buf.len()` starts a line.
    at_line_start: bool,
    /// Descriptors keyed by the stream offset of the line they belong to.
    fds: VecDeque<(u64, Vec<OwnedFd>)>,
    /// Dropping the rest of an oversized line.
    discarding: bool,
    ready: VecDeque<Frame>,
}

impl Framer {
    pub fn new(max_line: usize, max_fds: usize) -> Framer {
        Framer {
            max_line,
            max_fds,
            fds_overflowed: None,
            buf: Vec::new(),
            buf_start: 0,
            at_line_start: true,
            fds: VecDeque::new(),
            discarding: false,
            ready: VecDeque::new(),
        }
    }

    /// Feeds the bytes and descriptors one `recvmsg` returned.
    pub fn push(&mut self, data: &[u8], fds: Vec<OwnedFd>) {
        let start = self.buf_start + self.buf.len() as u64;
        if !fds.is_empty() {
            // Mid-line descriptors belong to the line in progress, which
            // (after the last cut) begins at `buf_start`.
            let owner = last_line_start(data, start, self.at_line_start).unwrap_or(self.buf_start);
            let held: usize = self
                .fds
                .iter()
                .filter(|(o, _)| *o == owner)
                .map(|(_, f)| f.len())
                .sum();
            if self.fds_overflowed == Some(owner) || held + fds.len() > self.max_fds {
                // A line with too many descriptors gets none (its request then
                // fails for lack of them), as a single oversized message does.
                tracing::warn!(
                    "client sent more than {} descriptors with one request; dropped them",
                    self.max_fds
                );
                self.fds.retain(|(o, _)| *o != owner);
                self.fds_overflowed = Some(owner);
            } else {
                self.fds.push_back((owner, fds));
            }
        }
        if let Some(&last) = data.last() {
            self.at_line_start = last == b'\n';
        }
        self.buf.extend_from_slice(data);
        self.cut_lines();
    }

    /// The next complete frame, if any.
    pub fn next_frame(&mut self) -> Option<Frame> {
        self.ready.pop_front()
    }

    /// Bytes of an unfinished line (a client that hung up mid-request).
    pub fn has_partial(&self) -> bool {
        !self.buf.is_empty() && !self.discarding
    }

    /// Whether any byte of an unfinished line (kept or being discarded) has
    /// arrived: the connection is in the middle of a request.
    pub fn mid_line(&self) -> bool {
        !self.at_line_start
    }

    fn cut_lines(&mut self) {
        loop {
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    let line_start = self.buf_start;
                    let rest = self.buf.split_off(nl + 1);
                    let mut bytes = std::mem::replace(&mut self.buf, rest);
                    bytes.pop();
                    self.buf_start += nl as u64 + 1;
                    let fds = self.take_fds(line_start, self.buf_start);
                    if self.discarding {
                        self.discarding = false;
                    } else if bytes.len() > self.max_line {
                        self.ready.push_back(Frame::TooLarge);
                    } else {
                        self.ready.push_back(Frame::Line(Line { bytes, fds }));
                    }
                }
                None => {
                    if self.buf.len() > self.max_line {
                        // Announce the error now rather than buffering an
                        // unbounded line, then drop bytes until the newline.
                        if !self.discarding {
                            self.ready.push_back(Frame::TooLarge);
                            self.discarding = true;
                        }
                        self.buf_start += self.buf.len() as u64;
                        self.buf.clear();
                    }
                    return;
                }
            }
        }
    }

    /// Descriptors of the line spanning `[start, end)`; older ones (from
    /// dropped lines) are closed.
    fn take_fds(&mut self, start: u64, end: u64) -> Vec<OwnedFd> {
        let mut out = Vec::new();
        while let Some((off, _)) = self.fds.front() {
            if *off >= end {
                break;
            }
            let (off, fds) = self.fds.pop_front().expect("front exists");
            if off >= start {
                out.extend(fds);
            }
        }
        out
    }
}

/// The stream offset of the last line that starts within `data` (which begins
/// at `start`); `None` if none does: then they belong to the line in progress,
/// which began earlier (only a misbehaving client sends descriptors mid-line).
fn last_line_start(data: &[u8], start: u64, starts_line: bool) -> Option<u64> {
    // A newline at the very end starts a line that is not in `data`.
    let body = &data[..data.len().saturating_sub(1)];
    match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => Some(start + i as u64 + 1),
        None if starts_line => Some(start),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fd() -> OwnedFd {
        std::fs::File::open("/dev/null").unwrap().into()
    }

    fn lines(f: &mut Framer) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        while let Some(fr) = f.next_frame() {
            match fr {
                Frame::Line(l) => out.push((String::from_utf8(l.bytes).unwrap(), l.fds.len())),
                Frame::TooLarge => out.push(("<too large>".into(), 0)),
            }
        }
        out
    }

    #[test]
    fn splits_lines_across_reads() {
        let mut f = Framer::new(100, 4);
        f.push(b"ab", vec![]);
        f.push(b"c\nde", vec![]);
        f.push(b"f\n", vec![]);
        assert_eq!(lines(&mut f), [("abc".into(), 0), ("def".into(), 0)]);
        assert!(!f.has_partial());
    }

    #[test]
    fn fds_go_to_the_line_they_started_with() {
        let mut f = Framer::new(100, 4);
        // First read: a whole line without fds.
        f.push(b"one\n", vec![]);
        // A read that returns the tail of a line plus a new line carrying fds.
        f.push(b"tw", vec![]);
        f.push(b"o\nthree\n", vec![fd(), fd()]);
        f.push(b"four\n", vec![fd()]);
        assert_eq!(
            lines(&mut f),
            [
                ("one".into(), 0),
                ("two".into(), 0),
                ("three".into(), 2),
                ("four".into(), 1)
            ]
        );
    }

    #[test]
    fn fds_of_a_line_split_over_reads_stay_with_it() {
        let mut f = Framer::new(100, 4);
        f.push(b"big-", vec![fd()]);
        f.push(b"line\n", vec![]);
        assert_eq!(lines(&mut f), [("big-line".into(), 1)]);
    }

    #[test]
    fn oversized_line_is_reported_once_and_dropped_with_its_fds() {
        let mut f = Framer::new(8, 4);
        f.push(b"0123456789", vec![fd()]);
        f.push(b"abcdef", vec![]);
        f.push(b"gh\nok\n", vec![]);
        assert_eq!(lines(&mut f), [("<too large>".into(), 0), ("ok".into(), 0)]);
        assert!(
            f.fds.is_empty(),
            "the dropped line's descriptors were closed"
        );
    }

    #[test]
    fn long_complete_line_in_one_read_is_too_large() {
        let mut f = Framer::new(4, 4);
        f.push(b"123456\nab\n", vec![]);
        assert_eq!(lines(&mut f), [("<too large>".into(), 0), ("ab".into(), 0)]);
    }

    #[test]
    fn descriptors_piled_onto_one_line_are_capped() {
        let mut f = Framer::new(1000, 4);
        // A hostile client: many messages, each with descriptors, no newline.
        for _ in 0..50 {
            f.push(b"x", vec![fd(), fd(), fd()]);
            let held: usize = f.fds.iter().map(|(_, v)| v.len()).sum();
            assert!(held <= 4, "{held} descriptors held for one line");
        }
        f.push(b"\nnext\n", vec![fd()]);
        // The flooded line gets none; the next line is not affected.
        assert_eq!(lines(&mut f), [("x".repeat(50), 0), ("next".into(), 1)]);
    }

    #[test]
    fn a_line_may_carry_up_to_the_limit_over_several_reads() {
        let mut f = Framer::new(1000, 4);
        f.push(b"a", vec![fd(), fd()]);
        f.push(b"b", vec![fd(), fd()]);
        f.push(b"\n", vec![]);
        assert_eq!(lines(&mut f), [("ab".into(), 4)]);
    }
}
