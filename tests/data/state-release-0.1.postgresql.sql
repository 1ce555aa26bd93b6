CREATE SCHEMA legacy01;
CREATE TABLE legacy01.audit_events (
    id bigint NOT NULL,
    at timestamp with time zone NOT NULL,
    actor character varying(255) NOT NULL,
    action character varying(255) NOT NULL,
    model character varying(255),
    before json,
    after json
);
CREATE SEQUENCE legacy01.audit_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE legacy01.audit_events_id_seq OWNED BY legacy01.audit_events.id;
CREATE TABLE legacy01.control_revision (
    id integer NOT NULL,
    revision bigint NOT NULL
);
CREATE TABLE legacy01.labels (
    model character varying(255) NOT NULL,
    prediction_id character varying(256) NOT NULL,
    value json NOT NULL,
    at timestamp with time zone NOT NULL,
    received_at timestamp with time zone NOT NULL
);
CREATE TABLE legacy01.leases (
    name character varying(64) NOT NULL,
    holder character varying(255) NOT NULL,
    epoch bigint NOT NULL,
    expires_at double precision NOT NULL,
    address character varying(1024),
    acquired_at timestamp with time zone NOT NULL
);
CREATE TABLE legacy01.monitor_runs (
    id bigint NOT NULL,
    model character varying(255) NOT NULL,
    version character varying(255) NOT NULL,
    kind character varying(16) NOT NULL,
    status character varying(16) NOT NULL,
    at timestamp with time zone NOT NULL,
    actor character varying(255) NOT NULL,
    rows integer NOT NULL,
    figures json NOT NULL,
    detail json NOT NULL,
    report character varying(255)
);
CREATE SEQUENCE legacy01.monitor_runs_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE legacy01.monitor_runs_id_seq OWNED BY legacy01.monitor_runs.id;
CREATE TABLE legacy01.predictions (
    model character varying(255) NOT NULL,
    id character varying(256) NOT NULL,
    version character varying(255) NOT NULL,
    route character varying(16) NOT NULL,
    at timestamp with time zone NOT NULL,
    latency_s double precision NOT NULL,
    outcome character varying(32) NOT NULL,
    inputs bytea NOT NULL,
    outputs bytea NOT NULL
);
CREATE TABLE legacy01.rollouts (
    id bigint NOT NULL,
    model character varying(255) NOT NULL,
    stable character varying(255) NOT NULL,
    canary character varying(255) NOT NULL,
    phase character varying(32) NOT NULL,
    active boolean NOT NULL,
    state json NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL
);
CREATE SEQUENCE legacy01.rollouts_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE legacy01.rollouts_id_seq OWNED BY legacy01.rollouts.id;
CREATE TABLE legacy01.schema_version (
    version integer NOT NULL,
    description character varying(200) NOT NULL,
    applied_at timestamp with time zone NOT NULL
);
CREATE TABLE legacy01.traffic_policies (
    model character varying(255) NOT NULL,
    policy json NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    revision bigint DEFAULT 0 NOT NULL
);
CREATE TABLE legacy01.trigger_states (
    model character varying(255) NOT NULL,
    version character varying(255) NOT NULL,
    rule character varying(255) NOT NULL,
    streak integer NOT NULL,
    last_fired_clock double precision,
    updated_at timestamp with time zone NOT NULL
);
CREATE TABLE legacy01.versions (
    model character varying(255) NOT NULL,
    version character varying(255) NOT NULL,
    artifact character varying(4096),
    runtime character varying(64) NOT NULL,
    batching json NOT NULL,
    desired character varying(16) NOT NULL,
    created_at timestamp with time zone NOT NULL,
    updated_at timestamp with time zone NOT NULL
);
CREATE TABLE legacy01.window_summaries (
    id bigint NOT NULL,
    replica character varying(255) NOT NULL,
    model character varying(255) NOT NULL,
    version character varying(255) NOT NULL,
    revision bigint NOT NULL,
    at timestamp with time zone NOT NULL,
    requests integer NOT NULL,
    errors integer NOT NULL,
    latency json NOT NULL,
    min_s double precision,
    max_s double precision,
    shadow_compared integer NOT NULL,
    shadow_agreed integer NOT NULL,
    batches integer NOT NULL,
    batch_rows integer NOT NULL,
    taken boolean NOT NULL
);
CREATE SEQUENCE legacy01.window_summaries_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;
ALTER SEQUENCE legacy01.window_summaries_id_seq OWNED BY legacy01.window_summaries.id;
ALTER TABLE ONLY legacy01.audit_events ALTER COLUMN id SET DEFAULT nextval('legacy01.audit_events_id_seq'::regclass);
ALTER TABLE ONLY legacy01.monitor_runs ALTER COLUMN id SET DEFAULT nextval('legacy01.monitor_runs_id_seq'::regclass);
ALTER TABLE ONLY legacy01.rollouts ALTER COLUMN id SET DEFAULT nextval('legacy01.rollouts_id_seq'::regclass);
ALTER TABLE ONLY legacy01.window_summaries ALTER COLUMN id SET DEFAULT nextval('legacy01.window_summaries_id_seq'::regclass);
INSERT INTO legacy01.audit_events VALUES (1, '2026-12-05 10:30:12.724435+00', 'ci', 'policy.set', 'mlp', 'null', '{"stable": "1"}');
INSERT INTO legacy01.control_revision VALUES (1, 2);
INSERT INTO legacy01.schema_version VALUES (1, 'traffic policies, rollouts, versions, audit log', '2026-12-05 10:30:11.942618+00');
INSERT INTO legacy01.schema_version VALUES (2, 'prediction log and labels', '2026-12-05 10:30:12.071835+00');
INSERT INTO legacy01.schema_version VALUES (3, 'prediction tensors as bytes; no index on the time alone', '2026-12-05 10:30:12.1997+00');
INSERT INTO legacy01.schema_version VALUES (4, 'drift and accuracy runs', '2026-12-05 10:30:12.279767+00');
INSERT INTO legacy01.schema_version VALUES (5, 'trigger rules'' state', '2026-12-05 10:30:12.3238+00');
INSERT INTO legacy01.schema_version VALUES (6, 'leader lease, control revision, policy revisions, window summaries', '2026-12-05 10:30:12.499701+00');
INSERT INTO legacy01.traffic_policies VALUES ('mlp', '{"stable": "1", "canary": "2", "canary_weight": 0.1, "shadows": [], "shadow_sample_rate": 1.0, "sticky_header": null, "sticky_parameter": null}', '2026-12-05 10:30:12.596126+00', 1);
INSERT INTO legacy01.versions VALUES ('mlp', '2', 'mlp/2/model.onnx', 'onnx', '{"max_batch_size": 32}', 'loaded', '2026-12-05 10:30:12.662152+00', '2026-12-05 10:30:12.662152+00');
ALTER TABLE ONLY legacy01.audit_events
    ADD CONSTRAINT audit_events_pkey PRIMARY KEY (id);
ALTER TABLE ONLY legacy01.control_revision
    ADD CONSTRAINT control_revision_pkey PRIMARY KEY (id);
ALTER TABLE ONLY legacy01.labels
    ADD CONSTRAINT labels_pkey PRIMARY KEY (model, prediction_id);
ALTER TABLE ONLY legacy01.leases
    ADD CONSTRAINT leases_pkey PRIMARY KEY (name);
ALTER TABLE ONLY legacy01.monitor_runs
    ADD CONSTRAINT monitor_runs_pkey PRIMARY KEY (id);
ALTER TABLE ONLY legacy01.predictions
    ADD CONSTRAINT predictions_pkey PRIMARY KEY (model, id, version);
ALTER TABLE ONLY legacy01.rollouts
    ADD CONSTRAINT rollouts_pkey PRIMARY KEY (id);
ALTER TABLE ONLY legacy01.schema_version
    ADD CONSTRAINT schema_version_pkey PRIMARY KEY (version);
ALTER TABLE ONLY legacy01.traffic_policies
    ADD CONSTRAINT traffic_policies_pkey PRIMARY KEY (model);
ALTER TABLE ONLY legacy01.trigger_states
    ADD CONSTRAINT trigger_states_pkey PRIMARY KEY (model, version, rule);
ALTER TABLE ONLY legacy01.versions
    ADD CONSTRAINT versions_pkey PRIMARY KEY (model, version);
ALTER TABLE ONLY legacy01.window_summaries
    ADD CONSTRAINT window_summaries_pkey PRIMARY KEY (id);
CREATE INDEX ix_audit_events_model_id ON legacy01.audit_events USING btree (model, id);
CREATE INDEX ix_monitor_runs_model_kind_id ON legacy01.monitor_runs USING btree (model, kind, id);
CREATE INDEX ix_predictions_model_version_at ON legacy01.predictions USING btree (model, version, at);
CREATE INDEX ix_rollouts_model_id ON legacy01.rollouts USING btree (model, id);
CREATE INDEX ix_window_summaries_model_at ON legacy01.window_summaries USING btree (model, at);
CREATE INDEX ix_window_summaries_model_version_revision ON legacy01.window_summaries USING btree (model, version, revision);
CREATE UNIQUE INDEX uq_rollouts_active_model ON legacy01.rollouts USING btree (model) WHERE (active = true);
