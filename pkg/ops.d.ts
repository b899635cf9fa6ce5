import type { Operation } from './index.js'

/** How each operation crosses the Worker boundary (see ops.js). */
export interface OperationSpec {
  readonly options?: number
  readonly transfer?: 'input' | 'bytes' | 'stream'
  readonly sync?: boolean
}

/** Every operation of a node, exactly the methods of `CairnNode`. */
export declare const OPERATIONS: { readonly [K in Operation]: OperationSpec }
