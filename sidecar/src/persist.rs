//! The state file in the run directory (the pod's emptyDir): what a restarted sidecar
//! container needs to resume the shutdowns in progress. Written atomically (temporary file,
//! then rename), so a sidecar killed mid-write leaves the previous version.

use std::path::Path;

use crate::state::Persisted;

/// Reads the state an earlier run of this container left; None when there is none.
pub fn load(path: &Path) -> Result<Option<Persisted>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| format!("{} is not a state file: {e}", path.display()))
}

/// Replaces the state file with `json`.
pub fn store(path: &Path, json: &str) -> Result<(), String> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("cannot replace {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_no_state_and_garbage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path), Ok(None));
        std::fs::write(&path, "{not json").unwrap();
        assert!(load(&path).unwrap_err().contains("is not a state file"));
        let state = Persisted::default();
        store(&path, &serde_json::to_string(&state).unwrap()).unwrap();
        assert_eq!(load(&path), Ok(Some(state)));
    }
}
