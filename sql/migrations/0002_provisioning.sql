-- Data source provisioning: which rows a file with `prune: true` wrote (deleted once they leave every file),
-- and the digest of the files a start last applied (replicas starting together apply them once).
ALTER TABLE data_source ADD COLUMN is_prunable boolean NOT NULL DEFAULT false;

CREATE TABLE provisioning_state (
    provisioner text PRIMARY KEY,
    digest text NOT NULL,
    applied timestamptz NOT NULL DEFAULT now()
);
