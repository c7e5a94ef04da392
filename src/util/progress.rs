//! Progress bars that stay out of the way: hidden with `--quiet` or when stderr is not a
//! terminal (pipes, CI logs), so machine-readable output is never interleaved with them.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

#[derive(Clone, Copy, Debug, Default)]
pub struct Ui {
    pub quiet: bool,
}

impl Ui {
    pub fn quiet() -> Self {
        Ui { quiet: true }
    }

    fn visible(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    /// A bar over `total` bytes.
    pub fn bytes(&self, total: u64, message: &str) -> ProgressBar {
        self.bar(
            total,
            message,
            "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
    }

    /// A bar over `total` items.
    pub fn items(&self, total: u64, message: &str) -> ProgressBar {
        self.bar(
            total,
            message,
            "{msg:>10} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
    }

    fn bar(&self, total: u64, message: &str, template: &str) -> ProgressBar {
        if !self.visible() {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(template)
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar
    }
}
