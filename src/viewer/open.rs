//! `--open`: hands the watch page's URL to the desktop's default browser.
//!
//! Runs the platform's opener (`xdg-open`, `open`, `start`) on a thread of its own, so a slow
//! or missing desktop never holds up the viewer; a failure is one line on stderr.

use std::process::{Command, Stdio};

/// The watch page's URL (the server's `/`) for the playlist URL the viewer printed.
pub(super) fn page_url(playlist_url: &str) -> &str {
    playlist_url
        .strip_suffix("live.m3u8")
        .unwrap_or(playlist_url)
}

/// The command that opens a URL in the default browser on this platform.
fn opener(url: &str) -> Command {
    let mut command = if cfg!(target_os = "macos") {
        Command::new("open")
    } else if cfg!(windows) {
        let mut c = Command::new("cmd");
        // `start`'s first quoted argument is a window title, hence the empty one.
        c.args(["/C", "start", ""]);
        c
    } else {
        Command::new("xdg-open")
    };
    command.arg(url);
    command
}

/// Opens the watch page for `playlist_url` in the default browser, in the background; if
/// that fails, says so on stderr with the URL to open by hand.
pub fn open_page(playlist_url: &str) {
    let url = page_url(playlist_url).to_owned();
    let spawned = std::thread::Builder::new()
        .name("open-page".into())
        .spawn(move || {
            let mut command = opener(&url);
            let name = command.get_program().to_string_lossy().into_owned();
            let result = command
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let why = match result {
                Ok(status) if status.success() => return,
                Ok(status) => format!("{name} failed ({status})"),
                Err(error) => format!("cannot run {name}: {error}"),
            };
            eprintln!("starling-viewer: could not open a browser ({why}); open {url} yourself");
        });
    if let Err(error) = spawned {
        eprintln!("starling-viewer: could not open a browser ({error}); open the page yourself");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_the_servers_root() {
        assert_eq!(
            page_url("http://127.0.0.1:8080/live.m3u8"),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(page_url("http://[::1]:9/"), "http://[::1]:9/");
    }

    #[test]
    fn the_opener_gets_the_url_last() {
        let command = opener("http://127.0.0.1:8080/");
        let last = command.get_args().last().map(|a| a.to_os_string());
        assert_eq!(last, Some("http://127.0.0.1:8080/".into()));
    }
}
