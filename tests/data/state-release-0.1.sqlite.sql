PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE schema_version (
	version INTEGER NOT NULL, 
	description VARCHAR(200) NOT NULL, 
	applied_at DATETIME NOT NULL, 
	PRIMARY KEY (version)
);
INSERT INTO schema_version VALUES(1,'traffic policies, rollouts, versions, audit log','2026-12-05 10:30:10.610213');
INSERT INTO schema_version VALUES(2,'prediction log and labels','2026-12-05 10:30:10.648576');
INSERT INTO schema_version VALUES(3,'prediction tensors as bytes; no index on the time alone','2026-12-05 10:30:10.662993');
INSERT INTO schema_version VALUES(4,'drift and accuracy runs','2026-12-05 10:30:10.682590');
INSERT INTO schema_version VALUES(5,'trigger rules'' state','2026-12-05 10:30:10.697101');
INSERT INTO schema_version VALUES(6,'leader lease, control revision, policy revisions, window summaries','2026-12-05 10:30:10.736773');
CREATE TABLE traffic_policies (
	model VARCHAR(255) NOT NULL, 
	policy JSON NOT NULL, 
	updated_at DATETIME NOT NULL, revision BIGINT DEFAULT 0 NOT NULL, 
	PRIMARY KEY (model)
);
INSERT INTO traffic_policies VALUES('mlp','{"stable": "1", "canary": "2", "canary_weight": 0.1, "shadows": [], "shadow_sample_rate": 1.0, "sticky_header": null, "sticky_parameter": null}','2026-12-05 10:30:10.769982',1);
CREATE TABLE rollouts (
	id INTEGER NOT NULL, 
	model VARCHAR(255) NOT NULL, 
	stable VARCHAR(255) NOT NULL, 
	canary VARCHAR(255) NOT NULL, 
	phase VARCHAR(32) NOT NULL, 
	active BOOLEAN NOT NULL, 
	state JSON NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (id)
);
CREATE TABLE versions (
	model VARCHAR(255) NOT NULL, 
	version VARCHAR(255) NOT NULL, 
	artifact VARCHAR(4096), 
	runtime VARCHAR(64) NOT NULL, 
	batching JSON NOT NULL, 
	desired VARCHAR(16) NOT NULL, 
	created_at DATETIME NOT NULL, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (model, version)
);
INSERT INTO versions VALUES('mlp','2','mlp/2/model.onnx','onnx','{"max_batch_size": 32}','loaded','2026-12-05 10:30:10.786362','2026-12-05 10:30:10.786362');
CREATE TABLE audit_events (
	id INTEGER NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(255) NOT NULL, 
	action VARCHAR(255) NOT NULL, 
	model VARCHAR(255), 
	"before" JSON, 
	"after" JSON, 
	PRIMARY KEY (id)
);
INSERT INTO audit_events VALUES(1,'2026-12-05 10:30:10.809419','ci','policy.set','mlp','null','{"stable": "1"}');
CREATE TABLE labels (
	model VARCHAR(255) NOT NULL, 
	prediction_id VARCHAR(256) NOT NULL, 
	value JSON NOT NULL, 
	at DATETIME NOT NULL, 
	received_at DATETIME NOT NULL, 
	PRIMARY KEY (model, prediction_id)
);
CREATE TABLE IF NOT EXISTS "predictions" (
	model VARCHAR(255) NOT NULL, 
	id VARCHAR(256) NOT NULL, 
	version VARCHAR(255) NOT NULL, 
	route VARCHAR(16) NOT NULL, 
	at DATETIME NOT NULL, 
	latency_s FLOAT NOT NULL, 
	outcome VARCHAR(32) NOT NULL, 
	inputs BLOB NOT NULL, 
	outputs BLOB NOT NULL, 
	PRIMARY KEY (model, id, version)
);
CREATE TABLE monitor_runs (
	id INTEGER NOT NULL, 
	model VARCHAR(255) NOT NULL, 
	version VARCHAR(255) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	at DATETIME NOT NULL, 
	actor VARCHAR(255) NOT NULL, 
	rows INTEGER NOT NULL, 
	figures JSON NOT NULL, 
	detail JSON NOT NULL, 
	report VARCHAR(255), 
	PRIMARY KEY (id)
);
CREATE TABLE trigger_states (
	model VARCHAR(255) NOT NULL, 
	version VARCHAR(255) NOT NULL, 
	rule VARCHAR(255) NOT NULL, 
	streak INTEGER NOT NULL, 
	last_fired_clock FLOAT, 
	updated_at DATETIME NOT NULL, 
	PRIMARY KEY (model, version, rule)
);
CREATE TABLE control_revision (
	id INTEGER NOT NULL, 
	revision BIGINT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO control_revision VALUES(1,2);
CREATE TABLE leases (
	name VARCHAR(64) NOT NULL, 
	holder VARCHAR(255) NOT NULL, 
	epoch BIGINT NOT NULL, 
	expires_at FLOAT NOT NULL, 
	address VARCHAR(1024), 
	acquired_at DATETIME NOT NULL, 
	PRIMARY KEY (name)
);
CREATE TABLE window_summaries (
	id INTEGER NOT NULL, 
	replica VARCHAR(255) NOT NULL, 
	model VARCHAR(255) NOT NULL, 
	version VARCHAR(255) NOT NULL, 
	revision BIGINT NOT NULL, 
	at DATETIME NOT NULL, 
	requests INTEGER NOT NULL, 
	errors INTEGER NOT NULL, 
	latency JSON NOT NULL, 
	min_s FLOAT, 
	max_s FLOAT, 
	shadow_compared INTEGER NOT NULL, 
	shadow_agreed INTEGER NOT NULL, 
	batches INTEGER NOT NULL, 
	batch_rows INTEGER NOT NULL, 
	taken BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_rollouts_model_id ON rollouts (model, id);
CREATE UNIQUE INDEX uq_rollouts_active_model ON rollouts (model) WHERE active = 1;
CREATE INDEX ix_audit_events_model_id ON audit_events (model, id);
CREATE INDEX ix_predictions_model_version_at ON predictions (model, version, at);
CREATE INDEX ix_monitor_runs_model_kind_id ON monitor_runs (model, kind, id);
CREATE INDEX ix_window_summaries_model_at ON window_summaries (model, at);
CREATE INDEX ix_window_summaries_model_version_revision ON window_summaries (model, version, revision);
COMMIT;
