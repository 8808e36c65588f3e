"""Which job runs where and when: fair dispatch, the sweeper, broker publishing, pools,
workers, job quotas."""
