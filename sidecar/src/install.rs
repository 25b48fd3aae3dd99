//! Copies the sidecar's own binary into the shared volume, so that app containers built
//! from any base image (scratch, distroless, alpine) can exec it as their preStop hook.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use lameduck_proto::names;

/// Copies `/proc/self/exe` to `DIR/bin/lameduck` atomically (copy to a temporary name in
/// the same directory, then rename), mode 0755.
pub fn install_self(dir: &Path) -> std::io::Result<PathBuf> {
    let bin_dir = dir.join(names::BIN_DIR);
    std::fs::create_dir_all(&bin_dir)?;
    std::fs::set_permissions(&bin_dir, std::fs::Permissions::from_mode(0o755))?;
    let target = bin_dir.join(names::BIN_NAME);
    let temporary = bin_dir.join(format!(".{}.{}.tmp", names::BIN_NAME, std::process::id()));
    // /proc/self/exe works even when the binary's own path is not visible.
    let source = Path::new("/proc/self/exe");
    let source = if source.exists() {
        source.to_path_buf()
    } else {
        std::env::current_exe()?
    };
    std::fs::copy(&source, &temporary)?;
    std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&temporary, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_itself_executable() {
        let dir = tempfile::tempdir().unwrap();
        let target = install_self(dir.path()).unwrap();
        let meta = std::fs::metadata(&target).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            meta.len(),
            std::fs::metadata("/proc/self/exe").unwrap().len()
        );
        // A second start replaces the file in place.
        install_self(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(target.parent().unwrap()).unwrap().count(),
            1
        );
    }
}
