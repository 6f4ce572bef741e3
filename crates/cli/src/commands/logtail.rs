//! `logs --tail N`: the last N lines of a log the daemon serves in chunks
//! (`vm.logs`, `daemon.logs`). The daemon returns at most 256 KiB a call and
//! knows bytes, not lines, so the window is read forward by offset and
//! doubled until it holds N lines or starts at the beginning of the file.

use banger_proto::methods::daemon::LogChunk;

/// The most the daemon returns in one call (`logfile::CHUNK`).
const CALL: u64 = 256 * 1024;
/// Past this much, print what the window holds rather than read on.
const MAX_WINDOW: u64 = 64 << 20;

/// The last `n` lines of the log behind `fetch(offset, tail_bytes)`, as a
/// chunk whose `next_offset` is where following (`-f`) goes on from.
pub fn last_lines<E>(
    fetch: &mut impl FnMut(Option<u64>, Option<u64>) -> Result<LogChunk, E>,
    n: usize,
) -> Result<LogChunk, E> {
    let mut chunk = fetch(None, Some(CALL))?;
    let end = chunk.next_offset;
    let mut window = CALL;
    while chunk.offset > 0 && window < MAX_WINDOW && !has_lines(&chunk.data, n) {
        window *= 2;
        let start = end.saturating_sub(window);
        let mut data = String::new();
        let mut at = start;
        let mut next = start;
        // Forward from `start` to (at least) the end seen first.
        loop {
            let c = fetch(Some(at), None)?;
            data.push_str(&c.data);
            next = c.next_offset.max(next);
            if c.next_offset == c.offset || c.next_offset >= end {
                break;
            }
            at = c.next_offset;
        }
        if start > 0 {
            // The window began mid-line: that partial line is not one of the N.
            match data.find('\n') {
                Some(nl) => drop(data.drain(..=nl)),
                None => data.clear(),
            }
        }
        chunk = LogChunk {
            offset: start,
            next_offset: next,
            data,
            ..chunk
        };
    }
    let tail = tail_lines(&chunk.data, n).to_string();
    Ok(LogChunk {
        offset: chunk.next_offset - tail.len() as u64,
        data: tail,
        ..chunk
    })
}

/// Whether `text` holds at least `n` whole lines (a last line without its
/// newline counts).
fn has_lines(text: &str, n: usize) -> bool {
    tail_lines(text, n).len() < text.len() || n == 0
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> &str {
    if n == 0 {
        return "";
    }
    let body = text.strip_suffix('\n').unwrap_or(text);
    match body.rmatch_indices('\n').nth(n - 1) {
        Some((i, _)) => &text[i + 1..],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_of_text() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail_lines("a\nb\n", 0), "");
        assert_eq!(tail_lines("", 3), "");
        assert!(has_lines("a\nb\nc\n", 2));
        assert!(has_lines("a\nb\nc\n", 0));
        assert!(!has_lines("b\nc\n", 3));
    }

    /// The daemon's `logfile::read_chunk` over an in-memory file.
    fn serve(file: &[u8], offset: Option<u64>, tail: Option<u64>) -> LogChunk {
        let len = file.len() as u64;
        let mut start = match offset {
            Some(o) if o > len => 0,
            Some(o) => o,
            None => len.saturating_sub(tail.unwrap_or(16 * 1024)),
        };
        let mut buf = file[start as usize..][..(len - start).min(CALL) as usize].to_vec();
        if offset.is_none() && start > 0 {
            if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                buf.drain(..=nl);
                start += nl as u64 + 1;
            }
        }
        LogChunk {
            path: "/log".into(),
            journald: false,
            offset: start,
            next_offset: start + buf.len() as u64,
            data: String::from_utf8(buf).unwrap(),
        }
    }

    fn log(lines: usize, width: usize) -> Vec<u8> {
        (0..lines)
            .map(|i| format!("{i:0width$}\n"))
            .collect::<String>()
            .into_bytes()
    }

    #[test]
    fn short_log_in_one_call() {
        let file = log(100, 8);
        let mut calls = 0;
        let mut fetch = |o, t| -> Result<LogChunk, ()> {
            calls += 1;
            Ok(serve(&file, o, t))
        };
        let c = last_lines(&mut fetch, 3).unwrap();
        assert_eq!(c.data, "00000097\n00000098\n00000099\n");
        assert_eq!(c.next_offset, file.len() as u64);
        assert_eq!(c.offset, file.len() as u64 - 27);
        assert_eq!(calls, 1);
        let all = last_lines(
            &mut |o, t| -> Result<_, ()> { Ok(serve(&file, o, t)) },
            1000,
        )
        .unwrap();
        assert_eq!(all.data.len(), file.len());
    }

    #[test]
    fn long_lines_need_a_wider_window() {
        // 40 lines of 20 KiB: the first 256 KiB hold 12 of them.
        let file = log(40, 20 * 1024 - 1);
        let c = last_lines(&mut |o, t| -> Result<_, ()> { Ok(serve(&file, o, t)) }, 30).unwrap();
        let lines: Vec<&str> = c.data.lines().collect();
        assert_eq!(lines.len(), 30);
        assert!(
            lines[0].ends_with("10"),
            "{}",
            &lines[0][lines[0].len() - 4..]
        );
        assert!(lines[29].ends_with("39"));
        assert_eq!(c.next_offset, file.len() as u64);
        // All of it, when N is more than the file has.
        let c = last_lines(&mut |o, t| -> Result<_, ()> { Ok(serve(&file, o, t)) }, 500).unwrap();
        assert_eq!(c.data.len(), file.len());
        assert_eq!(c.offset, 0);
    }
}
