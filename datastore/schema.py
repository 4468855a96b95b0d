"""Numbered schema migrations, applied in order on open. Never edit a released migration: add one."""

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE SEQUENCE prompt_ids START 1;
        CREATE TABLE prompts (
            id BIGINT PRIMARY KEY DEFAULT nextval('prompt_ids'),
            text VARCHAR NOT NULL UNIQUE,
            split VARCHAR NOT NULL DEFAULT 'train',           -- train | heldout
            source VARCHAR,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE model_ids START 1;
        CREATE TABLE models (
            id BIGINT PRIMARY KEY DEFAULT nextval('model_ids'),
            name VARCHAR NOT NULL UNIQUE,
            path VARCHAR NOT NULL,                             -- local folder or hub id
            kind VARCHAR NOT NULL,                             -- base | lora | full | scorer (a trained SPM)
            parent_id BIGINT,                                  -- lineage: the model this one was trained from
            round_id BIGINT,
            job_id BIGINT,
            dataset_version VARCHAR,
            metadata JSON,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE generation_ids START 1;
        CREATE TABLE generations (
            id BIGINT PRIMARY KEY DEFAULT nextval('generation_ids'),
            model_id BIGINT,
            prompt_id BIGINT NOT NULL,
            seed BIGINT NOT NULL,
            sampler VARCHAR NOT NULL,
            steps INTEGER NOT NULL,
            guidance DOUBLE NOT NULL,
            width INTEGER,
            height INTEGER,
            params JSON,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE pool_ids START 1;
        CREATE TABLE step_pools (
            id BIGINT PRIMARY KEY DEFAULT nextval('pool_ids'),
            generation_id BIGINT,
            prompt_id BIGINT NOT NULL,
            step_index INTEGER NOT NULL,                       -- position in the denoising chain
            num_steps INTEGER NOT NULL,
            timestep INTEGER NOT NULL,
            k INTEGER NOT NULL,
            continued_image VARCHAR,                           -- the candidate the chain continued from
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE TABLE images (
            id VARCHAR PRIMARY KEY,                            -- sha256 of the file's bytes
            path VARCHAR NOT NULL,                             -- relative to the media folder
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            format VARCHAR NOT NULL,
            nbytes BIGINT NOT NULL,
            generation_id BIGINT,
            pool_id BIGINT,                                    -- noisy-step images: their pool
            step_index INTEGER,
            timestep INTEGER,
            source_uid VARCHAR,                                -- uid in an imported file
            source_model VARCHAR,                              -- model name given by an imported file
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE round_ids START 1;
        CREATE TABLE rounds (
            id BIGINT PRIMARY KEY DEFAULT nextval('round_ids'),
            parent_model_id BIGINT,
            model_id BIGINT,
            status VARCHAR NOT NULL DEFAULT 'created',
            config JSON,
            results JSON,
            started_at TIMESTAMP,
            finished_at TIMESTAMP,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE pair_ids START 1;
        CREATE TABLE pairs (
            id BIGINT PRIMARY KEY DEFAULT nextval('pair_ids'),
            prompt_id BIGINT NOT NULL,
            image_a VARCHAR NOT NULL,
            image_b VARCHAR NOT NULL,
            kind VARCHAR NOT NULL,                             -- final | step
            timestep INTEGER,
            pool_id BIGINT,
            round_id BIGINT,
            gold_outcome VARCHAR,                              -- known answer for gold pairs: a | b | tie | both_bad
            source_ref VARCHAR,                                -- e.g. the ranking id of an imported row
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            UNIQUE (image_a, image_b)
        );

        CREATE SEQUENCE annotator_ids START 1;
        CREATE TABLE annotators (
            id BIGINT PRIMARY KEY DEFAULT nextval('annotator_ids'),
            name VARCHAR NOT NULL UNIQUE,
            kind VARCHAR NOT NULL,                             -- human | ai
            model VARCHAR,                                     -- AI annotators: scorer name
            version VARCHAR,                                   -- AI annotators: scorer version
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE judgment_ids START 1;
        CREATE TABLE judgments (
            id BIGINT PRIMARY KEY DEFAULT nextval('judgment_ids'),
            pair_id BIGINT NOT NULL,
            annotator_id BIGINT NOT NULL,
            source VARCHAR NOT NULL,                           -- app | labelstudio | ai | import
            outcome VARCHAR NOT NULL,                          -- a | b | tie | both_bad
            left_image VARCHAR,                                -- which image was shown on the left: a | b
            confidence DOUBLE,
            score_a DOUBLE,                                    -- AI judgments: the scorer's scores
            score_b DOUBLE,
            shown_at TIMESTAMP,
            answered_at TIMESTAMP,
            is_gold BOOLEAN NOT NULL DEFAULT false,
            external_id VARCHAR,                               -- e.g. the Label Studio annotation id
            external_updated_at VARCHAR,
            withdrawn BOOLEAN NOT NULL DEFAULT false,          -- deleted at the source; kept for audit
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        CREATE INDEX judgments_pair ON judgments (pair_id);
        CREATE INDEX judgments_external ON judgments (source, external_id);

        CREATE TABLE dataset_versions (
            id VARCHAR PRIMARY KEY,                            -- name-hashprefix
            name VARCHAR NOT NULL,
            content_hash VARCHAR NOT NULL,
            path VARCHAR NOT NULL,                             -- relative to the home folder
            n_pairs BIGINT NOT NULL,
            filters JSON,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );

        CREATE SEQUENCE job_ids START 1;
        CREATE TABLE jobs (
            id BIGINT PRIMARY KEY DEFAULT nextval('job_ids'),
            kind VARCHAR NOT NULL,
            status VARCHAR NOT NULL,                           -- queued | running | finished | failed | stopped
            pid INTEGER,
            run_dir VARCHAR,
            config JSON,
            error VARCHAR,
            round_id BIGINT,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            started_at TIMESTAMP,
            finished_at TIMESTAMP
        );

        CREATE TABLE metrics (
            job_id BIGINT,
            round_id BIGINT,
            model_id BIGINT,
            step BIGINT,
            name VARCHAR NOT NULL,
            value DOUBLE NOT NULL,
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        """,
    ),
    (
        2,
        """
        -- Pairs pushed to a Label Studio project as tasks, with the side shown on the left.
        CREATE TABLE labelstudio_tasks (
            project_id BIGINT NOT NULL,
            task_id BIGINT NOT NULL,
            pair_id BIGINT NOT NULL,
            left_image VARCHAR NOT NULL,                       -- a | b
            pushed_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (project_id, task_id),
            UNIQUE (project_id, pair_id)
        );
        """,
    ),
    (
        3,
        """
        -- Which Label Studio project and task each Label Studio judgment came from, so that a
        -- pull withdraws only judgments of its own project when a pair is in several projects.
        CREATE TABLE labelstudio_annotations (
            project_id BIGINT NOT NULL,
            annotation_id BIGINT NOT NULL,                     -- the judgment's external_id
            task_id BIGINT NOT NULL,
            judgment_id BIGINT NOT NULL UNIQUE,
            PRIMARY KEY (project_id, annotation_id)
        );
        """,
    ),
    (
        5,
        """
        -- Background jobs: what the supervisor runs and how it ended, so any process can re-attach.
        ALTER TABLE jobs ADD COLUMN command JSON;               -- argv of the real command
        ALTER TABLE jobs ADD COLUMN cwd VARCHAR;                -- its working folder
        ALTER TABLE jobs ADD COLUMN env JSON;                   -- environment variables set on top of the launcher's
        ALTER TABLE jobs ADD COLUMN log_path VARCHAR;           -- stdout + stderr of every attempt
        ALTER TABLE jobs ADD COLUMN launch_key VARCHAR;         -- identical launches share it
        ALTER TABLE jobs ADD COLUMN pid_created DOUBLE;         -- start time of pid, to tell a reused pid apart
        ALTER TABLE jobs ADD COLUMN exit_code INTEGER;          -- negative: killed by that signal
        ALTER TABLE jobs ADD COLUMN stop_requested BOOLEAN NOT NULL DEFAULT false;
        ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 1;
        ALTER TABLE jobs ADD COLUMN queued_at TIMESTAMP;
        """,
    ),
    (
        7,
        """
        -- The judgment inbox (datastore/inbox.py): per inbox file, the highest inbox row whose
        -- judgment is in this database. Written in the same transaction as those judgments.
        CREATE TABLE inbox_applied (
            inbox_id VARCHAR PRIMARY KEY,
            through_id BIGINT NOT NULL
        );
        """,
    ),
    (
        4,
        """
        -- Saved curations (labeling/curation.py): a name, a consensus method and filters, rebuilt
        -- into a dataset version on demand.
        CREATE TABLE curations (
            name VARCHAR PRIMARY KEY,
            method VARCHAR NOT NULL,                           -- majority | dawid_skene
            filters JSON NOT NULL,                             -- the curation's filters, by field name
            created_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            updated_at TIMESTAMP NOT NULL DEFAULT current_timestamp
        );
        """,
    ),
    (
        6,
        """
        -- Closed rounds (workbench/rounds/): what a round curated and trained, and why it failed.
        ALTER TABLE rounds ADD COLUMN dataset_version VARCHAR;  -- the dataset version it trained on
        ALTER TABLE rounds ADD COLUMN run_dir VARCHAR;          -- its training run folder
        ALTER TABLE rounds ADD COLUMN error VARCHAR;            -- the error of a failed round
        """,
    ),
    (
        10,
        """
        -- Inbox rows that could not be applied (datastore/inbox.py): kept with their error, out of
        -- the way of every later drain. Written in the same transaction as the inbox mark.
        CREATE TABLE inbox_quarantine (
            inbox_id VARCHAR NOT NULL,                         -- the inbox file's random id
            inbox_row BIGINT NOT NULL,                         -- the row's id in that file
            fields JSON NOT NULL,                              -- the row's stored values
            error VARCHAR NOT NULL,                            -- why it was refused
            quarantined_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
            PRIMARY KEY (inbox_id, inbox_row)
        );
        """,
    ),
    (
        8,
        """
        -- Judgments from the browser's judging widget carry the key the browser made for the key
        -- press, so that a resend is recognised and an undo names the judgment it takes back.
        ALTER TABLE judgments ADD COLUMN idempotency_key VARCHAR;
        -- Pairs handed to one annotator's browser (labeling/queue.py), reserved until expires_at
        -- so that others are not handed the same last pairs beyond the overlap.
        CREATE TABLE pair_leases (
            pair_id BIGINT NOT NULL,
            annotator_id BIGINT NOT NULL,
            expires_at TIMESTAMP NOT NULL,
            PRIMARY KEY (pair_id, annotator_id)
        );
        """,
    ),
    (
        9,
        """
        -- Completion previews (workbench generate --previews completion): the finished image a
        -- step-pool candidate leads to when its chain is completed with deterministic DDIM.
        CREATE TABLE image_previews (
            image_id VARCHAR NOT NULL,                         -- the pool candidate
            kind VARCHAR NOT NULL,                             -- completion
            preview_id VARCHAR NOT NULL,                       -- the finished image
            PRIMARY KEY (image_id, kind)
        );
        -- What a step judgment was made on: null = the pair's own images (predicted x0s),
        -- completion = their completion previews (the label is about the finished image).
        ALTER TABLE judgments ADD COLUMN preview VARCHAR;
        """,
    ),
    (
        11,
        """
        -- A pair with its prompt's text and its two images' files (paths relative to the media
        -- folder): what is shown, scored, pushed or snapshotted. Pairs whose prompt or images are
        -- missing are not in it.
        CREATE VIEW pair_media AS
        SELECT p.id, p.prompt_id, pr.text AS prompt, p.image_a, p.image_b, ia.path AS path_a, ib.path AS path_b,
               p.kind, p.timestep, p.pool_id, p.round_id, p.gold_outcome, p.source_ref, p.created_at,
               ia.generation_id AS generation_a, ib.generation_id AS generation_b,
               ia.source_model AS source_model_a, ib.source_model AS source_model_b
        FROM pairs p
        JOIN prompts pr ON pr.id = p.prompt_id
        JOIN images ia ON ia.id = p.image_a
        JOIN images ib ON ib.id = p.image_b;
        """,
    ),
]
