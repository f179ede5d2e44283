"""The ``svdecode_*`` lm-eval task configs (YAML) and their offline loaders (``loaders.py``).

lm-eval finds them through ``--include_path`` (``svdecode lm-eval`` adds this folder) and imports
``loaders.py`` by path; ``svdecode.integrations.lm_eval.TASKS_DIR`` points here.
"""
