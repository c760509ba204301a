//! Whole-file writes that never leave a half-written file behind: write a temporary file in
//! the same directory, fsync it, rename it over the target, fsync the directory.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// Atomically replaces `path` with whatever `write` puts into the temporary path it is given.
pub fn replace_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&tmp).and_then(|()| {
        // Some writers create private (0600) files; these are meant to be shared and committed.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644))
                .with_context(|| format!("chmod {}", tmp.display()))?;
        }
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    // The rename is durable once the directory entry is; not every filesystem allows opening
    // a directory for fsync, and the data is already safe, so a failure here is not an error.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Atomically writes `bytes` to `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    replace_with(path, |tmp| {
        let mut f = File::create(tmp).with_context(|| format!("create {}", tmp.display()))?;
        f.write_all(bytes)
            .with_context(|| format!("write {}", tmp.display()))?;
        Ok(())
    })
}
