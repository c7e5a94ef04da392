//! The human report of an upload, and its progress bars.

use super::*;
use indicatif::{MultiProgress, ProgressDrawTarget};
use std::io::IsTerminal;

pub(crate) fn multi_progress(ui: &Ui) -> MultiProgress {
    if ui.quiet || !std::io::stderr().is_terminal() {
        MultiProgress::with_draw_target(ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    }
}

/// A file name for the terminal: control characters (a name can hold escape sequences) shown
/// as `?`.
fn printable(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

pub(crate) fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

impl UploadSummary {
    /// The human report.
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let head = if self.dry_run {
            "upload plan (dry run, nothing sent)"
        } else {
            "upload"
        };
        let _ = writeln!(
            s,
            "{head}: {} -> {} (revision {})",
            self.dir.display(),
            self.url,
            self.revision
        );
        let width = self
            .files
            .iter()
            .map(|f| printable(&f.path).len())
            .max()
            .unwrap_or(4)
            .max(4);
        for f in &self.files {
            let how = match (self.dry_run, f.action) {
                (true, _) if f.large => "large file (LFS/Xet)",
                (true, _) => "inline",
                (_, Action::Planned) => "planned",
                (_, Action::Unchanged) => "unchanged",
                (_, Action::Inline) => "sent inline",
                (_, Action::Lfs) => "sent via Git LFS",
                (_, Action::Xet) => "sent via Xet",
                (_, Action::Ignored) => "ignored by the Hub",
            };
            let _ = writeln!(
                s,
                "  {:<width$}  {:>11}  {how}{}",
                printable(&f.path),
                card::human_bytes(f.bytes),
                if f.generated {
                    " (generated model card)"
                } else {
                    ""
                }
            );
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(
                s,
                "  not sent ({}; upload sends only the files the index lists and the side \
                 files, see docs/upload.md):",
                self.skipped.len()
            );
            const SHOWN: usize = 50;
            for k in self.skipped.iter().take(SHOWN) {
                let _ = writeln!(s, "    {}  ({})", printable(&k.path), k.reason);
            }
            if self.skipped.len() > SHOWN {
                let _ = writeln!(
                    s,
                    "    ... and {} more (--json lists them all)",
                    self.skipped.len() - SHOWN
                );
            }
        }
        let large = self.files.iter().filter(|f| f.large).count();
        let _ = writeln!(
            s,
            "  {} files, {}, {large} as large files",
            self.files.len(),
            card::human_bytes(self.total_bytes)
        );
        if let Some(v) = &self.verified_against {
            let _ = writeln!(s, "  verified against {v}: passed");
        }
        for w in &self.warnings {
            let _ = writeln!(s, "warning: {w}");
        }
        if self.dry_run {
            let _ = writeln!(
                s,
                "token: {}",
                match &self.token_source {
                    Some(src) => format!("found ({src})"),
                    None => no_token_message().replace("no Hugging Face token: ", "none found: "),
                }
            );
            let _ = writeln!(
                s,
                "dry run: validated and planned; files the Hub already holds will not be sent"
            );
            return s;
        }
        if self.repo_created == Some(true) {
            let _ = writeln!(s, "created the repository {}", self.url);
        }
        if self.nothing_changed {
            let _ = writeln!(
                s,
                "nothing changed: the Hub already holds all {} files with the same content; no commit made",
                self.files.len()
            );
        } else {
            let _ = writeln!(
                s,
                "sent {} of {} files ({}) in one commit{}",
                self.sent_files,
                self.files.len(),
                card::human_bytes(self.sent_bytes),
                self.large_file_transfer
                    .as_deref()
                    .map(|t| format!(", large files via {t}"))
                    .unwrap_or_default()
            );
            if let Some(c) = &self.commit {
                if let Some(u) = &c.pull_request_url {
                    let _ = writeln!(s, "pull request: {u}");
                }
                if let Some(u) = &c.url {
                    let _ = writeln!(s, "commit: {u}");
                }
            }
        }
        let _ = writeln!(
            s,
            "{} requests, {} sent{}, {:.2} s",
            self.traffic.requests,
            card::human_bytes(self.traffic.bytes_sent),
            if self.traffic.retries > 0 {
                format!(", {} retried", self.traffic.retries)
            } else {
                String::new()
            },
            self.seconds
        );
        s
    }
}
