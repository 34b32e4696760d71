"""IKEv1 Phase 1 (Main Mode, pre-shared keys) and informational exchanges, sans-IO."""
